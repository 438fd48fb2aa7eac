"""Model-holding workers (torch): rollout and learner; Ray actors or plain objects inline."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnisched.config.schema import LearnerConfig
from omnisched.errors import OmniError
from omnisched.learner.base import Count, ScoredGroup, TrainBatch, TrainSample
from omnisched.rollout.base import Completion, SamplingParams

if TYPE_CHECKING:  # torch loads inside the worker processes only; the driver stays torch-free
    import torch

    from omnisched.rollout.weight_sync import TensorMeta

log = logging.getLogger(__name__)
TRAINER_STATE = "trainer_state.pt"


def release_freed_memory() -> None:
    """Collect garbage and return freed heap pages to the OS (glibc keeps them otherwise).

    Workers call it after each generate / train step: the actors take turns, so what one keeps
    of its peak adds to the next one's peak in the run's total memory."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def freeze_long_lived() -> None:
    """Move everything alive now (torch, transformers, the model) out of the collector's view.

    Called once a worker is built: `release_freed_memory` then scans only what later calls
    create. Measured: a full collection over the ~360k objects of a loaded worker took
    0.16-0.17 s per call against 0.015 s for a tiny-model generate; after the freeze, ~0 s."""
    gc.collect()
    gc.freeze()


def _quiet_worker(threads: int | None) -> None:
    """Thread count, and no per-load progress bars from transformers in the run's output."""
    import torch
    import transformers

    if threads:
        torch.set_num_threads(threads)
    transformers.utils.logging.disable_progress_bar()
    for name in ("transformers", "datasets", "torch.distributed", "DeepSpeed"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _for_vllm_ray_executor() -> None:
    """vLLM's engine process (a child of this actor) starts the shard workers as Ray actors in
    this actor's placement group: it joins this Ray (not a new local one), and it must see the
    CUDA platform although Ray hid every GPU from this actor, which asked for none (each shard
    worker gets its own GPU fraction; vLLM maps them to devices itself). Untested on GPUs."""
    import ray

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        del os.environ["CUDA_VISIBLE_DEVICES"]


class RolloutWorker:
    """Owns one rollout engine: `generate`, `update_weights`, `sleep` / `wake_up`.

    `options` go to the engine's constructor (`rollout_pool.engine_options`: tensor parallelism,
    sleep level); `env` is set first, for the processes the engine starts (vLLM's Ray executor)."""

    def __init__(
        self,
        backend: str,
        model_path: str,
        dtype: str,
        threads: int | None,
        options: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        from omnisched.model.precision import resolve_dtype
        from omnisched.rollout import ENGINES

        os.environ.update(env or {})
        if "VLLM_RAY_BUNDLE_INDICES" in os.environ:
            _for_vllm_ray_executor()
        _quiet_worker(threads)
        engine = ENGINES.get(backend)
        self.engine = engine(
            model_path, dtype=resolve_dtype(dtype), threads=threads, **(options or {})
        )
        self.asleep = False
        self.sleeps = 0  # how often it slept (colocated: once per learner step)
        freeze_long_lived()

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        if self.asleep:
            raise OmniError("rollout: generate on a sleeping engine (wake_up first)")
        out = self.engine.generate(prompts, params)
        release_freed_memory()
        return out

    def update_weights(self, state_dict: Mapping[str, torch.Tensor]) -> bool:
        self.engine.update_weights(state_dict)
        return True

    def copy_weights(self, live: Mapping[str, torch.Tensor]) -> bool:
        """In-process sync: the learner's live tensors copied in place (engines that cannot:
        loaded as a state dict)."""
        copy = getattr(self.engine, "copy_weights", None)
        (copy or self.engine.update_weights)(live)
        return True

    def sleep(self, level: int) -> str | None:
        """Free GPU memory while a colocated learner trains: None once asleep, else why the
        engine cannot (it then stays awake and serves as before)."""
        if self.asleep:
            return None
        sleep = getattr(self.engine, "sleep", None)
        reason = f"the {type(self.engine).__name__} engine cannot sleep" if sleep is None else None
        reason = reason or sleep(level)
        self.asleep = reason is None
        self.sleeps += self.asleep
        return reason

    def wake_up(self, tags: list[str] | None = None) -> bool:
        """Reallocate what `sleep` freed (`tags`: "weights" then "kv_cache", or None: all)."""
        if self.asleep:
            self.engine.wake_up(tags)
            self.asleep = not (tags is None or "kv_cache" in tags)
        return not self.asleep

    def join_weight_group(self, host: str, port: int, world_size: int, rank_offset: int) -> Any:
        """Join the learner's broadcast group (`rollout.weight_sync: broadcast`)."""
        if not hasattr(self.engine, "join_weight_group"):
            raise OmniError(
                f"rollout.weight_sync: broadcast: the {type(self.engine).__name__} engine cannot "
                "receive broadcast weights; use rollout.weight_sync: object_store"
            )
        return self.engine.join_weight_group(host, port, world_size, rank_offset)

    def receive_weights(self, meta: Sequence[TensorMeta]) -> int:
        """Receive the weights learner rank 0 broadcasts (its `broadcast_weights`, concurrently)."""
        return self.engine.receive_weights(meta)


def trainer_state_file(rank: int, world_size: int) -> str:
    """Where `save_checkpoint` puts a rank's optimizer and RNG state inside the checkpoint."""
    return TRAINER_STATE if world_size == 1 else f"trainer_state_rank{rank}.pt"


class LearnerWorker:
    """Owns the policy being trained, or one data-parallel rank of it: `train_groups` /
    `train_step`, `state_dict`, `save`.

    With `world_size` 1 the constructor builds the learner. A rank of a larger world starts
    empty: once rank 0's `rendezvous` address is known, every rank calls `join` at once."""

    def __init__(
        self,
        backend: str,
        model_path: str,
        cfg: LearnerConfig,
        threads: int | None,
        seed: int,
        max_completion_len: int | None = None,
        world_size: int = 1,
        temperature: float = 1.0,
    ) -> None:
        self.build_args = (backend, model_path, threads, seed, max_completion_len, temperature)
        self.cfg = cfg
        self.rank = 0
        self.world_size = world_size
        if world_size == 1:
            self._build()

    def rendezvous(self) -> tuple[str, int]:
        """This node's IP and a port free on it, where rank 0 hosts the process group's store."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def join(self, rank: int, master_addr: str, master_port: int) -> int:
        """Become `rank`: set the env torch.distributed reads, then build the learner (DeepSpeed
        joins the process group as it starts, so this returns once every rank has joined)."""
        os.environ.update(
            RANK=str(rank),
            WORLD_SIZE=str(self.world_size),
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
            LOCAL_RANK="0",  # Ray shows each actor only its own GPU
        )
        self.rank = rank
        self._build()
        return rank

    def _build(self) -> None:
        import torch

        from omnisched.learner import LEARNERS
        from omnisched.model.build import cpu_attention, load_model

        backend, model_path, threads, seed, max_completion_len, temperature = self.build_args
        _quiet_worker(threads)
        torch.manual_seed(seed)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        adapters = None
        if self.cfg.lora is not None:  # a LoRA checkpoint: its base, then its adapters
            from omnisched.learner.lora import checkpoint_parts, load_adapters

            model_path, adapters = checkpoint_parts(model_path)
        model, tokenizer = load_model(model_path, "float32", cpu_attention(device))
        model.to(device)
        if adapters is not None:
            model = load_adapters(model, adapters)
        self.learner = LEARNERS.get(backend)(
            model,
            self.cfg,
            pad_token_id=tokenizer.pad_token_id,
            max_completion_len=max_completion_len,
            temperature=temperature,
        )
        self.tokenizer = tokenizer
        freeze_long_lived()

    def train_groups(self, groups: Sequence[ScoredGroup]) -> dict[str, float]:
        """One optimizer step on the `train_batch` of `groups` (a world of one only)."""
        batch = self.train_batch(groups)
        if not batch.samples:
            return {"samples_trained": 0}
        metrics = self.train_step(batch.samples, batch.num_seqs, batch.num_tokens)
        return {**metrics, "samples_trained": len(batch.samples)}

    def train_batch(self, groups: Sequence[ScoredGroup]) -> TrainBatch:
        from omnisched.learner.batch import train_batch

        return train_batch(groups, self.cfg)

    def train_step(
        self, samples: Sequence[TrainSample], num_seqs: Count = None, num_tokens: Count = None
    ) -> dict[str, float]:
        metrics = self.learner.train_step(samples, num_seqs, num_tokens)
        release_freed_memory()
        return metrics

    def state_dict(self, dtype: str | None = None) -> dict[str, torch.Tensor] | None:
        """The full policy weights on rank 0 (floating-point ones cast to `dtype`, e.g. the
        rollout engines' `model.dtype`: they cast on load anyway, to the same values, and bf16
        halves what crosses the object store: 16 -> 8 MB and ray.put+get 37 -> 16 ms for the
        tiny model); None on other ranks, which under ZeRO-3 must still join the parameter
        gathers (they hold shards of every parameter)."""
        if self.rank == 0:
            state = self.learner.state_dict()
            if dtype is None:
                return state
            import torch

            from omnisched.model.precision import resolve_dtype

            cast = getattr(torch, resolve_dtype(dtype))
            return {k: v.to(cast) if v.is_floating_point() else v for k, v in state.items()}
        if self.cfg.deepspeed.zero_stage == 3:
            self.learner.state_dict()
        return None

    def live_weights(self) -> dict[str, torch.Tensor] | None:
        """The policy's own tensors (no copy), for an engine in this process to copy from;
        None where this rank does not hold them whole (a world of several ranks, ZeRO-3) or they
        are not the engines' weights (LoRA: the merged weights come from `state_dict`)."""
        sharded = self.cfg.backend == "deepspeed" and self.cfg.deepspeed.zero_stage == 3
        if self.world_size > 1 or sharded or self.cfg.lora is not None:
            return None
        model = getattr(self.learner, "model", None)
        return None if model is None else model.state_dict(keep_vars=False)

    def join_weight_group(self, host: str, port: int, world_size: int) -> list[TensorMeta]:
        """As rank 0 of the learner world, become rank 0 (the sender) of the rollout engines'
        broadcast group hosted at `host:port` (`rendezvous`); returns the weights metadata the
        engines receive by. Under ZeRO-3 the other ranks call `state_dict` meanwhile."""
        import torch

        from omnisched.rollout import weight_sync

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.weight_group = weight_sync.join(host, port, 0, world_size, device)
        return weight_sync.weights_meta(self.learner.state_dict())

    def broadcast_weights(self) -> list[TensorMeta]:
        """Send the policy weights to the engines of the broadcast group (which receive them
        concurrently); returns the metadata sent by. Other ranks call `state_dict` meanwhile."""
        from omnisched.rollout import weight_sync

        return weight_sync.send(self.weight_group, self.learner.state_dict())

    def save(self, path: str) -> str:
        """The policy as an HF folder, written by rank 0 (every rank of a world must call it)."""
        self.learner.save(Path(path))
        if self.rank == 0:
            self.tokenizer.save_pretrained(path)
        return path

    def save_checkpoint(self, path: str) -> str:
        """The policy as an HF folder plus this rank's optimizer and RNG state, to resume
        training (a world's ranks write beside each other: `path` must be shared storage)."""
        import torch

        self.save(path)
        optimizer = getattr(self.learner, "optimizer", None)
        state = {"torch_rng": torch.get_rng_state()}
        if optimizer is not None:
            state["optimizer"] = optimizer.state_dict()
        torch.save(state, Path(path) / trainer_state_file(self.rank, self.world_size))
        return path

    def load_trainer_state(self, path: str) -> bool:
        """Restore what `save_checkpoint` wrote for this rank beside the weights (the weights were
        loaded from the same folder when this worker was built)."""
        import torch

        file = Path(path) / trainer_state_file(self.rank, self.world_size)
        if not file.is_file():
            return False
        state = torch.load(file, weights_only=False)
        torch.set_rng_state(state["torch_rng"])
        optimizer = getattr(self.learner, "optimizer", None)
        if optimizer is not None and "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        return True
