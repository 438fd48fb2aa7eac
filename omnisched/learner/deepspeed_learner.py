"""DeepSpeed ZeRO GRPO learner: the torch learner's micro-batches and loss on a DeepSpeed engine.

The GRPO step is `TorchLearner`'s (same loss, PPO epochs, KL to a frozen reference); DeepSpeed
owns what scales out: ZeRO sharding of optimizer states, gradients (stage 2) and parameters
(stage 3) over data-parallel ranks, the gradient reduction, bf16 with fp32 master weights, and
gradient clipping. Each rank calls `train_step` on its own samples and must get as many
micro-batches as every other rank (ZeRO runs collectives per micro-batch); gradients are averaged
over ranks, so each rank divides its loss by the whole batch's counts over the world size: the
step is then the single-learner step on every rank's samples. Without CUDA it runs on
DeepSpeed's CPU accelerator over gloo.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from transformers import PreTrainedModel

from omnisched.config.learner import ZERO3_CHUNKS, LearnerConfig
from omnisched.errors import ConfigError
from omnisched.learner import lora
from omnisched.learner.base import Count, TrainSample
from omnisched.learner.batching import plan_micro_batches, split_to_count
from omnisched.learner.micro_batch import MicroBatch, build_micro_batch, to_device
from omnisched.learner.shared import LearnerBase
from omnisched.learner.step import (
    Normalisers,
    accumulate_gradients,
    check_samples,
    fill_fixed_logprobs,
    normalisers,
    step_metrics,
)

if not torch.cuda.is_available():  # deepspeed picks its accelerator when first imported
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import deepspeed

if not torch.cuda.is_available():
    # The CPU accelerator compiles its shared-memory all-reduce op (used by inference tensor
    # parallelism) when the first engine starts: 40-60 s of gcc on a fresh 2-core machine, for a
    # kernel training never calls (its collectives go through gloo). DeepSpeed keeps the op
    # compatibility table as one module-level dict whose edits persist: mark the op unavailable.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def ds_config(cfg: LearnerConfig) -> dict[str, Any]:
    """The DeepSpeed config for `cfg`, with `cfg.deepspeed.overrides` merged over it."""
    ds = cfg.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    generated = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": 1,  # the learner marks each accumulation boundary itself
        "gradient_clipping": cfg.max_grad_norm,
        "bf16": {"enabled": cfg.bf16},
        "zero_optimization": zero,
        "zero_force_ds_cpu_optimizer": False,  # torch AdamW steps offloaded states too
    }
    return _merge(generated, ds.overrides)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = _merge(merged[key], value)
        merged[key] = value
    return merged


def init_distributed() -> None:
    """Join the process group the env describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, as
    torchrun sets them); with no RANK, form a group of one on a free port, leaving the env as is
    (child processes, e.g. Ray workers, must not inherit a rendezvous meant for this process)."""
    os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed reads it; a Ray actor sees only its GPU
    if dist.is_initialized():  # (set it even then: DeepSpeed checks it at every initialize)
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if "RANK" in os.environ:
        dist.init_process_group(backend)
    else:
        url = f"tcp://127.0.0.1:{_free_port()}"
        dist.init_process_group(backend, init_method=url, rank=0, world_size=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DeepSpeedLearner(LearnerBase):
    """GRPO on one HF causal LM wrapped by `deepspeed.initialize` (ZeRO 0-3, torch AdamW).

    Same constructor as `TorchLearner`; `cfg.deepspeed` picks the ZeRO stage, optimizer offload,
    micro-batches per optimizer step and raw DeepSpeed config overrides.
    """

    def _setup(self) -> None:  # LearnerBase's constructor: cfg, model, ref_model, ...
        cfg, model = self.cfg, self.model
        if cfg.logits_chunk_tokens and cfg.deepspeed.zero_stage == 3:  # (the schema checks it)
            raise ConfigError(ZERO3_CHUNKS)
        self.dtypes = {k: v.dtype for k, v in lora.base_state(model).items()}  # sync dtypes
        self.dtype = model.dtype
        init_distributed()
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.engine, *_ = deepspeed.initialize(
            model=model, optimizer=self.optimizer, config=ds_config(cfg)
        )
        self.model: PreTrainedModel = self.engine.module
        self.device = self.engine.device
        if self.ref_model is not None:
            self.ref_model.to(self.device)

    def train_step(
        self, samples: Sequence[TrainSample], num_seqs: Count = None, num_tokens: Count = None
    ) -> dict[str, float]:
        """`cfg.ppo_epochs` passes over `samples`, each one optimizer step per accumulation group;
        metrics (this rank's, as `TorchLearner.train_step`) are averaged over the steps.
        `num_seqs` / `num_tokens` count the whole batch over every rank (None: this rank's
        `samples` times the world size, i.e. ranks of equal counts)."""
        t0 = time.perf_counter()
        check_samples(samples)
        cfg = self.cfg
        plan = plan_micro_batches(samples, cfg.micro_batch_size, cfg.micro_batch_tokens)
        plan = self._as_many_as_every_rank(plan)
        batches = [to_device(build_micro_batch(c, self.pad_token_id), self.device) for c in plan]
        norm = normalisers(samples, num_seqs, num_tokens, self.max_completion_len)
        if num_seqs is not None or num_tokens is not None:  # the world's: this rank's share
            world = dist.get_world_size()
            norm = Normalisers(norm.tokens / world, norm.seqs / world, norm.max_len)
        fill_fixed_logprobs(self.engine, self.ref_model, batches, cfg, self.temperature)
        self.engine.train()
        steps = [
            self._optimizer_step(group, group_norm)
            for _ in range(cfg.ppo_epochs)
            for group, group_norm in self._accumulation_groups(batches, norm)
        ]
        return step_metrics(steps, samples, cfg.ppo_epochs, t0)

    def state_dict(self) -> dict[str, Tensor]:
        """Full policy weights as a detached CPU snapshot in the model's original dtypes. Under
        ZeRO-3 each parameter is gathered from its shards in turn: call it on every rank. With
        LoRA: the merged weights under the base model's names."""
        gather = deepspeed.zero.GatheredParameters
        if self.cfg.lora is not None:
            return lora.merged_state_dict(self.model, gather, self.dtypes)
        full: dict[str, Tensor] = {}
        copies: dict[int, Tensor] = {}  # tied weights appear under two names
        for name, tensor in self.model.state_dict(keep_vars=True).items():
            if id(tensor) not in copies:
                with gather([tensor]):
                    copies[id(tensor)] = tensor.detach().to("cpu", self.dtypes[name], copy=True)
            full[name] = copies[id(tensor)]
        return full

    def save(self, path: Path | str) -> None:
        """Rank 0 writes an HF model folder of the full weights (every rank must call it)."""
        state = self.state_dict()
        gather = deepspeed.zero.GatheredParameters
        adapters = lora.adapter_weights(self.model, gather, self.dtype) if self.cfg.lora else None
        if dist.get_rank() == 0:
            if adapters is not None:  # the merged weights, and the adapters in `adapter/`
                lora.save(self.model, path, state, adapters)
            else:
                self.model.save_pretrained(str(path), state_dict=state)
            self.model.config.dtype = str(self.dtype).removeprefix("torch.")  # not the engine's
            self.model.config.save_pretrained(str(path))

    def _accumulation_groups(
        self, batches: list[MicroBatch], norm: Normalisers
    ) -> list[tuple[list[MicroBatch], Normalisers]]:
        """Micro-batches per optimizer step, each with the counts that normalise its loss: the
        whole step's when one group holds every micro-batch, else the group's share of them
        (in proportion to the tokens, resp. rows, it trains)."""
        size = self.cfg.deepspeed.gradient_accumulation_steps or len(batches)
        if size >= len(batches):
            return [(batches, norm)]
        tokens = sum(float(mb.mask.sum()) for mb in batches)
        rows = sum(len(mb.advantages) for mb in batches)
        out = []
        for i in range(0, len(batches), size):
            group = batches[i : i + size]
            t = sum(float(mb.mask.sum()) for mb in group)
            r = sum(len(mb.advantages) for mb in group)
            share = Normalisers(norm.tokens * t / tokens, norm.seqs * r / rows, norm.max_len)
            out.append((group, share))
        return out

    def _optimizer_step(self, batches: list[MicroBatch], norm: Normalisers) -> dict[str, float]:
        """DeepSpeed accumulates (and ZeRO reduces) micro-batch gradients up to the boundary, then
        clips and steps. The losses are already normalised by the step's counts: no 1/GAS scale."""

        def backward(loss: Tensor, last: bool) -> None:
            self.engine.set_gradient_accumulation_boundary(last)
            self.engine.backward(loss, scale_wrt_gas=False)

        sums = accumulate_gradients(
            self.engine, batches, self.cfg, backward, norm, self.temperature
        )
        plain_norm = self._plain_grad_norm()
        self.engine.step()
        norm_value = self.engine.get_global_grad_norm() if plain_norm is None else plain_norm
        if norm_value is None:
            raise RuntimeError("DeepSpeed computed no gradient norm for this step")
        sums["grad_norm"] = torch.as_tensor(norm_value)  # pre-clip, over all ranks
        return {k: float(v) for k, v in sums.items()}

    def _plain_grad_norm(self) -> Tensor | None:
        """The norm of the reduced gradients when DeepSpeed steps the torch optimizer directly
        (ZeRO-0 in fp32): it clips them then without recording the norm."""
        if self.engine.optimizer is not self.optimizer:
            return None
        return torch.nn.utils.get_total_norm(
            [p.grad for p in self.model.parameters() if p.grad is not None]
        )

    def _as_many_as_every_rank(self, plan: list[list[TrainSample]]) -> list[list[TrainSample]]:
        """This rank's micro-batches split up to the most any rank has (ZeRO runs collectives
        per micro-batch; `learner_group.deal` gives every rank enough samples for it); fails on
        every rank, instead of hanging in a collective, when some rank cannot."""
        if dist.get_world_size() == 1:
            return plan
        rows = sum(map(len, plan))
        bounds = torch.tensor([len(plan), -len(plan), -rows], device=self.device)
        dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
        most, fewest, fewest_rows = int(bounds[0]), -int(bounds[1]), -int(bounds[2])
        if fewest_rows < most:
            cfg = self.cfg
            unit = (
                f"up to {cfg.micro_batch_size} samples"
                if cfg.micro_batch_tokens is None
                else f"up to {cfg.micro_batch_tokens} tokens"
            )
            raise ValueError(
                f"ranks got between {fewest} and {most} micro-batches of {unit} and a rank has "
                f"only {fewest_rows} samples; give every rank as many samples per step"
            )
        return split_to_count(plan, most)
