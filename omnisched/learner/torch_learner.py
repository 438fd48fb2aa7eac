"""Plain-torch GRPO learner: micro-batched gradient accumulation, AdamW, bf16 autocast.

One `train_step` = for each PPO epoch, one optimizer step over all samples; the step's pieces
(micro-batches, logprobs at the sampling temperature, the loss and its whole-batch normalisers)
live in `omnisched.learner.step`, shared with the DeepSpeed learner.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from omnisched.learner import lora
from omnisched.learner.base import Count, TrainSample
from omnisched.learner.micro_batch import MicroBatch, micro_batches
from omnisched.learner.shared import LearnerBase
from omnisched.learner.step import (
    GradAlignment,
    Normalisers,
    accumulate_gradients,
    check_samples,
    fill_fixed_logprobs,
    normalisers,
    step_metrics,
)


class TorchLearner(LearnerBase):
    """GRPO on one HF causal LM with plain torch: AdamW, grad clipping, optional KL to a ref.

    The constructor is `LearnerBase`'s (model, cfg, pad_token_id, ref_model, max_completion_len,
    temperature).
    """

    def _setup(self) -> None:  # LearnerBase's constructor: cfg, model, ref_model, ...
        cfg = self.cfg
        self.device = next(self.model.parameters()).device
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )

    def train_step(
        self, samples: Sequence[TrainSample], num_seqs: Count = None, num_tokens: Count = None
    ) -> dict[str, float]:
        """`cfg.ppo_epochs` optimizer steps on `samples`; metrics are averaged over the epochs.

        `num_seqs` / `num_tokens` are the whole batch's counts when `samples` leave some out
        (`TrainBatch`). Metrics: loss, clip_frac, ratio, entropy, grad_norm (pre-clip), kl (with
        a reference), tokens (completion tokens trained), step_time_s, tokens_per_s.
        """
        t0 = time.perf_counter()
        batches, norm = self._prepare(samples, num_seqs, num_tokens)
        epochs = [self._epoch(batches, norm) for _ in range(self.cfg.ppo_epochs)]
        return step_metrics(epochs, samples, self.cfg.ppo_epochs, t0)

    def compute_gradients(
        self, samples: Sequence[TrainSample], num_seqs: Count = None, num_tokens: Count = None
    ) -> dict[str, float]:
        """The first epoch's loss and gradient (left in each parameter's `.grad`) exactly as
        `train_step` computes them, without clipping or an optimizer step: for checking the
        objective against another implementation."""
        batches, norm = self._prepare(samples, num_seqs, num_tokens)
        self.optimizer.zero_grad(set_to_none=True)
        sums = accumulate_gradients(
            self.model, batches, self.cfg, lambda loss, _: loss.backward(), norm, self.temperature
        )
        return {k: float(v) for k, v in sums.items()}

    def state_dict(self) -> dict[str, Tensor]:
        """A detached CPU snapshot of the policy weights (later steps do not change it); with
        LoRA the merged weights under the base model's names."""
        if self.cfg.lora is not None:
            return lora.merged_state_dict(self.model)
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def save(self, path: Path | str) -> None:
        """An HF folder of the policy (with LoRA: merged, the adapters in `adapter/`)."""
        if self.cfg.lora is not None:
            merged, adapters = lora.merged_state_dict(self.model), lora.adapter_weights(self.model)
            return lora.save(self.model, path, merged, adapters)
        self.model.save_pretrained(str(path))

    def _prepare(
        self, samples: Sequence[TrainSample], num_seqs: int | None, num_tokens: int | None
    ) -> tuple[list[MicroBatch], Normalisers]:
        """Micro-batches with their fixed (reference, pre-update) logprobs, and the normalisers;
        the model is left in train mode."""
        check_samples(samples)
        cfg = self.cfg
        batches = micro_batches(
            samples, cfg.micro_batch_size, self.pad_token_id, self.device, cfg.micro_batch_tokens
        )
        norm = normalisers(samples, num_seqs, num_tokens, self.max_completion_len)
        fill_fixed_logprobs(self.model, self.ref_model, batches, self.cfg, self.temperature)
        self.model.train()
        return batches, norm

    def _epoch(self, batches: list[MicroBatch], norm: Normalisers) -> dict[str, float]:
        """One optimizer step: accumulate micro-batch gradients, clip, AdamW."""
        self.optimizer.zero_grad(set_to_none=True)
        alignment = GradAlignment(self.model) if self.cfg.grad_alignment else None
        sums = accumulate_gradients(
            self.model,
            batches,
            self.cfg,
            lambda loss, _: loss.backward(),
            norm,
            self.temperature,
            alignment,
        )
        sums["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.optimizer.step()
        return {k: float(v) for k, v in sums.items()}
