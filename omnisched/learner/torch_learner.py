"""Plain-torch GRPO learner: micro-batched gradient accumulation, AdamW, bf16 autocast.

One `train_step` = for each PPO epoch, one optimizer step over all samples. Micro-batch losses
are normalised by whole-batch counts, so accumulating them gives exactly the full-batch gradient.
Logits are computed only at positions that predict completion tokens (HF `logits_to_keep`).
The step's pieces are module functions, shared with the DeepSpeed learner; only the backward
pass and the optimizer step differ between backends.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
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


def micro_batches(
    samples: Sequence[TrainSample], size: int, pad_token_id: int, device: torch.device
) -> list[MicroBatch]:
    """Chunks of `size` samples on `device`, longest first; empty completions are left out."""
    # Sorting by length before chunking keeps padding small; the loss does not depend on order.
    # Empty completions carry no token loss; they still count in the step's num_seqs.
    order = sorted(
        (s for s in samples if s.completion_ids),
        key=lambda s: len(s.prompt_ids) + len(s.completion_ids),
        reverse=True,
    )
    chunks = [order[i : i + size] for i in range(0, len(order), size)]
    return [_to_device(build_micro_batch(c, pad_token_id), device) for c in chunks]


def _to_device(mb: MicroBatch, device: torch.device) -> MicroBatch:
    moved = {k: v.to(device) for k, v in vars(mb).items() if isinstance(v, Tensor)}
    return MicroBatch(**moved)


def policy_logits(model: nn.Module, mb: MicroBatch, bf16: bool) -> Tensor:
    """Logits [b, W, V] at the window positions (`model` may be a DeepSpeed engine)."""
    with torch.autocast(mb.input_ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(
            input_ids=mb.input_ids,
            attention_mask=mb.attention_mask,
            logits_to_keep=mb.positions,
            use_cache=False,
        )
    return out.logits


@torch.no_grad()
def fill_fixed_logprobs(
    model: nn.Module, ref_model: nn.Module | None, batches: list[MicroBatch], cfg: LearnerConfig
) -> None:
    """Logprobs that stay fixed across PPO epochs: the reference's, and (when epochs > 1) the
    pre-update policy's for samples without sampler logprobs, so later epochs see ratio != 1."""
    need_old = cfg.ppo_epochs > 1
    if need_old:
        model.eval()
    for mb in batches:
        if ref_model is not None:
            ref_logits = policy_logits(ref_model, mb, cfg.bf16)
            mb.ref_logp, _ = token_logprobs_and_entropy(ref_logits, mb.labels)
        if need_old and not bool(mb.has_old.all()):
            cur, _ = token_logprobs_and_entropy(policy_logits(model, mb, cfg.bf16), mb.labels)
            mb.old_logp = torch.where(mb.has_old, mb.old_logp, cur)
            mb.has_old = torch.ones_like(mb.has_old)


Backward = Callable[[Tensor, bool], None]  # (micro-batch loss, is the step's last micro-batch)


def accumulate_gradients(
    model: nn.Module,
    batches: list[MicroBatch],
    cfg: LearnerConfig,
    backward: Backward,
    *,
    max_len: int,
    num_tokens: int,
    num_seqs: int,
) -> dict[str, Tensor]:
    """Forward and `backward` every micro-batch of one optimizer step; returns the step's loss and
    token-weighted metric means (kept on the device: one host sync per step, not per batch)."""
    sums: dict[str, Tensor] = {}
    for i, mb in enumerate(batches):
        logp, entropy = token_logprobs_and_entropy(policy_logits(model, mb, cfg.bf16), mb.labels)
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
        backward(loss, i == len(batches) - 1)
        weight = mb.mask.sum() / max(num_tokens, 1)  # token-weighted metric means
        stats["entropy"] = masked_mean(entropy, mb.mask)
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + weight * v
        sums["loss"] = sums.get("loss", 0.0) + loss.detach()
    return sums


def step_metrics(
    steps: list[dict[str, float]], samples: Sequence[TrainSample], ppo_epochs: int, t0: float
) -> dict[str, float]:
    """Metrics averaged over a train_step's optimizer steps, plus token counts and throughput."""
    metrics = {k: sum(s[k] for s in steps) / len(steps) for k in steps[0]}
    elapsed = time.perf_counter() - t0
    tokens = sum(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
    metrics.update(
        tokens=float(sum(len(s.completion_ids) for s in samples)),
        step_time_s=elapsed,
        tokens_per_s=tokens * ppo_epochs / elapsed,
    )
    return metrics


def max_completion(samples: Sequence[TrainSample], max_completion_len: int | None) -> int:
    """Dr.GRPO's normaliser: the configured budget, else the step's longest completion."""
    return max_completion_len or max(len(s.completion_ids) for s in samples)


def frozen_reference(
    model: nn.Module, ref_model: nn.Module | None, cfg: LearnerConfig
) -> nn.Module | None:
    """The KL reference: the given one, else a copy of `model` when `cfg.kl_coef > 0`; frozen."""
    if ref_model is None and cfg.kl_coef > 0:
        ref_model = copy.deepcopy(model)
    if ref_model is not None:
        ref_model.requires_grad_(False).eval()
    return ref_model


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
        self.ref_model = frozen_reference(model, ref_model, cfg)
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
        cfg = self.cfg
        batches = micro_batches(samples, cfg.micro_batch_size, self.pad_token_id, self.device)
        num_tokens = sum(len(s.completion_ids) for s in samples)
        max_len = max_completion(samples, self.max_completion_len)
        fill_fixed_logprobs(self.model, self.ref_model, batches, cfg)
        self.model.train()
        epochs = [
            self._epoch(batches, num_tokens, len(samples), max_len) for _ in range(cfg.ppo_epochs)
        ]
        return step_metrics(epochs, samples, cfg.ppo_epochs, t0)

    def state_dict(self) -> dict[str, Tensor]:
        """A detached CPU snapshot of the policy weights (later steps do not change it)."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def save(self, path: Path | str) -> None:
        self.model.save_pretrained(str(path))

    def _epoch(
        self, batches: list[MicroBatch], num_tokens: int, num_seqs: int, max_len: int
    ) -> dict[str, float]:
        """One optimizer step: accumulate micro-batch gradients, clip, AdamW."""
        self.optimizer.zero_grad(set_to_none=True)
        sums = accumulate_gradients(
            self.model,
            batches,
            self.cfg,
            lambda loss, _last: loss.backward(),
            max_len=max_len,
            num_tokens=num_tokens,
            num_seqs=num_seqs,
        )
        sums["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.optimizer.step()
        return {k: float(v) for k, v in sums.items()}
