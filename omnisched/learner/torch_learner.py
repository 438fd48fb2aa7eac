"""Plain-torch GRPO learner: micro-batched gradient accumulation, AdamW, bf16 autocast.

One `train_step` = for each PPO epoch, one optimizer step over all samples. Micro-batch losses
are normalised by whole-batch counts, so accumulating them gives exactly the full-batch gradient.
Logits are computed only at positions that predict completion tokens (HF `logits_to_keep`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from transformers import PreTrainedModel

from omnisched.config.schema import LearnerConfig
from omnisched.learner.base import TrainSample
from omnisched.learner.grpo import grpo_loss, masked_mean, token_logprobs_and_entropy


@dataclass
class MicroBatch:
    """Right-padded prompt+completion rows; `[b, W]` tensors cover the window `positions`."""

    input_ids: Tensor  # [b, L]
    attention_mask: Tensor  # [b, L]
    positions: Tensor  # [W] sequence positions whose logits predict a completion token
    labels: Tensor  # [b, W] the token at position + 1
    mask: Tensor  # [b, W] True where the label is a completion token
    advantages: Tensor  # [b]
    old_logp: Tensor  # [b, W] sampler logprobs (0 where absent)
    has_old: Tensor  # [b, 1] True where the sample carried old_logprobs
    ref_logp: Tensor | None = None  # [b, W] frozen reference logprobs, filled before the epochs


def build_micro_batch(samples: Sequence[TrainSample], pad_token_id: int) -> MicroBatch:
    """Pad samples to one batch; completion token j of row i sits at position P_i + j."""
    prompt_lens = torch.tensor([len(s.prompt_ids) for s in samples])
    comp_lens = torch.tensor([len(s.completion_ids) for s in samples])
    ends = prompt_lens + comp_lens
    input_ids = torch.full((len(samples), int(ends.max())), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, s in enumerate(samples):
        input_ids[i, : ends[i]] = torch.tensor(s.prompt_ids + s.completion_ids, dtype=torch.long)
        attention_mask[i, : ends[i]] = 1
    start = int(prompt_lens.min()) - 1  # logits at position p predict the token at p + 1
    positions = torch.arange(start, max(int(ends.max()) - 1, start + 1))
    labels = input_ids[:, positions + 1]
    mask = (positions >= prompt_lens[:, None] - 1) & (positions < ends[:, None] - 1)
    old_logp = torch.zeros(labels.shape, dtype=torch.float32)
    has_old = torch.zeros(len(samples), 1, dtype=torch.bool)
    for i, s in enumerate(samples):
        if s.old_logprobs is not None:
            first = int(prompt_lens[i]) - 1 - start
            old_logp[i, first : first + len(s.old_logprobs)] = torch.tensor(s.old_logprobs)
            has_old[i] = True
    advantages = torch.tensor([s.advantage for s in samples], dtype=torch.float32)
    return MicroBatch(
        input_ids, attention_mask, positions, labels, mask, advantages, old_logp, has_old
    )


def check_samples(samples: Sequence[TrainSample]) -> None:
    """Reject batches the loss cannot be defined on, naming the offending sample."""
    if not any(s.completion_ids for s in samples):
        raise ValueError("train_step needs at least one sample with a non-empty completion")
    for i, s in enumerate(samples):
        if not s.prompt_ids:
            raise ValueError(f"sample {i}: empty prompt_ids (a completion token needs context)")
        if s.old_logprobs is not None and len(s.old_logprobs) != len(s.completion_ids):
            raise ValueError(
                f"sample {i}: {len(s.old_logprobs)} old_logprobs for "
                f"{len(s.completion_ids)} completion tokens"
            )


class TorchLearner:
    """GRPO on one HF causal LM with plain torch: AdamW, grad clipping, optional k3 KL to a ref.

    `max_completion_len` is Dr.GRPO's constant normaliser (set it to the rollout's max_new_tokens);
    None uses the longest completion of each step.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        cfg: LearnerConfig,
        pad_token_id: int,
        ref_model: PreTrainedModel | None = None,
        max_completion_len: int | None = None,
    ) -> None:
        self.model = model
        self.cfg = cfg
        self.pad_token_id = pad_token_id
        self.max_completion_len = max_completion_len
        if ref_model is None and cfg.kl_coef > 0:
            ref_model = copy.deepcopy(model)
        if ref_model is not None:
            ref_model.requires_grad_(False).eval()
        self.ref_model = ref_model
        self.device = next(model.parameters()).device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )

    def train_step(self, samples: Sequence[TrainSample]) -> dict[str, float]:
        """`cfg.ppo_epochs` optimizer steps on `samples`; metrics are averaged over the epochs.

        loss, clip_frac, ratio, entropy, grad_norm (pre-clip), kl (when a reference exists),
        tokens (completion tokens that carry loss), step_time_s, tokens_per_s (prompt+completion).
        """
        t0 = time.perf_counter()
        check_samples(samples)
        batches = self._micro_batches(samples)
        num_tokens = sum(len(s.completion_ids) for s in samples)
        max_len = self.max_completion_len or max(len(s.completion_ids) for s in samples)
        self._fill_fixed_logprobs(batches)
        self.model.train()
        epochs = [
            self._epoch(batches, num_tokens, len(samples), max_len)
            for _ in range(self.cfg.ppo_epochs)
        ]
        metrics = {k: sum(e[k] for e in epochs) / len(epochs) for k in epochs[0]}
        elapsed = time.perf_counter() - t0
        tokens = sum(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
        metrics.update(
            tokens=float(num_tokens),
            step_time_s=elapsed,
            tokens_per_s=tokens * self.cfg.ppo_epochs / elapsed,
        )
        return metrics

    def state_dict(self) -> dict[str, Tensor]:
        """A detached CPU snapshot of the policy weights (later steps do not change it)."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def save(self, path: Path | str) -> None:
        self.model.save_pretrained(str(path))

    def _micro_batches(self, samples: Sequence[TrainSample]) -> list[MicroBatch]:
        # Sorting by length before chunking keeps padding small; the loss does not depend on order.
        # Empty completions carry no token loss; they still count in the step's num_seqs.
        order = sorted(
            (s for s in samples if s.completion_ids),
            key=lambda s: len(s.prompt_ids) + len(s.completion_ids),
            reverse=True,
        )
        size = self.cfg.micro_batch_size
        chunks = [order[i : i + size] for i in range(0, len(order), size)]
        return [self._to_device(build_micro_batch(c, self.pad_token_id)) for c in chunks]

    def _to_device(self, mb: MicroBatch) -> MicroBatch:
        moved = {k: v.to(self.device) for k, v in vars(mb).items() if isinstance(v, Tensor)}
        return MicroBatch(**moved)

    def _logits(self, model: PreTrainedModel, mb: MicroBatch) -> Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            out = model(
                input_ids=mb.input_ids,
                attention_mask=mb.attention_mask,
                logits_to_keep=mb.positions,
                use_cache=False,
            )
        return out.logits

    @torch.no_grad()
    def _fill_fixed_logprobs(self, batches: list[MicroBatch]) -> None:
        """Logprobs that stay fixed across PPO epochs: the reference's, and (when epochs > 1) the
        pre-update policy's for samples without sampler logprobs, so later epochs see ratio != 1."""
        need_old = self.cfg.ppo_epochs > 1
        if need_old:
            self.model.eval()
        for mb in batches:
            if self.ref_model is not None:
                mb.ref_logp, _ = token_logprobs_and_entropy(
                    self._logits(self.ref_model, mb), mb.labels
                )
            if need_old and not bool(mb.has_old.all()):
                cur, _ = token_logprobs_and_entropy(self._logits(self.model, mb), mb.labels)
                mb.old_logp = torch.where(mb.has_old, mb.old_logp, cur)
                mb.has_old = torch.ones_like(mb.has_old)

    def _epoch(
        self, batches: list[MicroBatch], num_tokens: int, num_seqs: int, max_len: int
    ) -> dict[str, float]:
        """One optimizer step: accumulate micro-batch gradients, clip, AdamW."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, Tensor] = {}  # kept on the device: one host sync per step, not per batch
        for mb in batches:
            logp, entropy = token_logprobs_and_entropy(self._logits(self.model, mb), mb.labels)
            old = torch.where(mb.has_old, mb.old_logp, logp.detach())  # on-policy: ratio 1
            loss, stats = grpo_loss(
                logp,
                old,
                mb.advantages,
                mb.mask,
                clip_eps=cfg.clip_eps,
                clip_eps_high=cfg.clip_eps_high,
                loss_agg=cfg.loss_agg,
                kl_coef=cfg.kl_coef,
                ref_logp=mb.ref_logp,
                max_len=max_len,
                total_tokens=num_tokens,
                total_seqs=num_seqs,
            )
            loss.backward()
            weight = mb.mask.sum() / max(num_tokens, 1)  # token-weighted metric means
            stats["entropy"] = masked_mean(entropy, mb.mask)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + weight * v
            sums["loss"] = sums.get("loss", 0.0) + loss.detach()
        sums["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.optimizer.step()
        return {k: float(v) for k, v in sums.items()}
