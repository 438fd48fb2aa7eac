"""Samples -> right-padded micro-batch tensors, grouped as `batching.plan_micro_batches` says."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from omnisched.learner.base import TrainSample
from omnisched.learner.batching import plan_micro_batches, split_to_count


@dataclass
class MicroBatch:
    """Right-padded prompt+completion rows; `[b, W]` tensors cover the window `positions`."""

    input_ids: Tensor  # [b, L]
    attention_mask: Tensor  # [b, L]
    positions: Tensor  # [W] sequence positions whose logits predict a completion token
    labels: Tensor  # [b, W] the token at position + 1
    mask: Tensor  # [b, W] True where the label is a completion token that carries loss
    advantages: Tensor  # [b]
    old_logp: Tensor  # [b, W] sampler logprobs (0 where absent)
    has_old: Tensor  # [b, 1] True where the sample carried old_logprobs
    ref_logp: Tensor | None = None  # [b, W] frozen reference logprobs, filled before the epochs
    domains: tuple[str | None, ...] = ()  # each row's domain (gradient alignment)
    targets: Tensor | None = None  # [b, W] `mask` plus filler rows' completion tokens


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
    targets = (positions >= prompt_lens[:, None] - 1) & (positions < ends[:, None] - 1)
    mask = targets & ~torch.tensor([s.pad for s in samples])[:, None]  # fillers carry no loss
    old_logp = torch.zeros(labels.shape, dtype=torch.float32)
    has_old = torch.zeros(len(samples), 1, dtype=torch.bool)
    for i, s in enumerate(samples):
        if s.old_logprobs is not None:
            first = int(prompt_lens[i]) - 1 - start
            old_logp[i, first : first + len(s.old_logprobs)] = torch.tensor(s.old_logprobs)
            has_old[i] = True
    advantages = torch.tensor([s.advantage for s in samples], dtype=torch.float32)
    return MicroBatch(
        input_ids,
        attention_mask,
        positions,
        labels,
        mask,
        advantages,
        old_logp,
        has_old,
        domains=tuple(s.domain for s in samples),
        targets=targets,
    )


def to_device(mb: MicroBatch, device: torch.device) -> MicroBatch:
    moved = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in vars(mb).items()}
    return MicroBatch(**moved)


def micro_batches(
    samples: Sequence[TrainSample],
    size: int,
    pad_token_id: int,
    device: torch.device,
    max_tokens: int | None = None,
    count: int | None = None,
) -> list[MicroBatch]:
    """`plan_micro_batches` built on `device`; with `count`, split up to that many."""
    plan = plan_micro_batches(samples, size, max_tokens)
    if count is not None:
        plan = split_to_count(plan, count)
    return [to_device(build_micro_batch(c, pad_token_id), device) for c in plan]
