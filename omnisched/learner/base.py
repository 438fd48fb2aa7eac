"""The learner contract: GRPO optimizer steps on scored, advantage-weighted samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # the driver imports these contracts without loading torch
    import torch


Count = int | None  # a whole batch's count for the loss normalisers; None: count what is given


@dataclass
class TrainSample:
    """One completion ready for a policy-gradient step.

    `old_logprobs` are the per-token logprobs of the policy that sampled the completion; when
    None, the learner uses its own current logprobs (detached), i.e. the on-policy ratio of 1.
    """

    prompt_ids: list[int]
    completion_ids: list[int]
    advantage: float
    old_logprobs: list[float] | None = None
    pad: bool = False  # a filler row (equal micro-batch counts across ranks): carries no loss
    domain: str | None = None  # where its prompt came from (per-domain gradient alignment)


@dataclass
class ScoredGroup:
    """The G completions of one drawn prompt with their rewards, before advantages are
    computed. `group_id` is unique per draw: the same prompt drawn twice is two groups."""

    prompt_ids: list[int]
    completion_ids: list[list[int]]
    rewards: list[float]
    group_id: str = ""
    logprobs: list[list[float]] | None = None  # the sampler's, per completion token (off-policy)
    domain: str | None = None


@dataclass
class TrainBatch:
    """What one optimizer step trains on. `samples` may leave out completions that cannot move
    the loss (zero advantage and no KL term): a speed-up only. `num_seqs` and `num_tokens` count
    every completion of the batch as drawn (and their tokens), so the loss normalisers of
    GRPO, DAPO and Dr.GRPO are those of the whole batch, whatever was left out."""

    samples: list[TrainSample]
    num_seqs: int
    num_tokens: int


@runtime_checkable
class Learner(Protocol):
    """A training backend (plain torch on CPU, DeepSpeed ZeRO on GPU)."""

    def train_step(
        self, samples: Sequence[TrainSample], num_seqs: Count = None, num_tokens: Count = None
    ) -> dict[str, float]:
        """One optimizer step on the samples; returns scalar metrics (loss, kl, grad_norm...).

        `num_seqs` / `num_tokens`: the whole batch's counts for the loss normalisers (a
        `TrainBatch`'s); None counts `samples`."""
        ...

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Current policy weights, for syncing rollout engines."""
        ...

    def save(self, path: Path) -> None:
        """Write the policy as an HF model folder (loadable by transformers, TRL and vLLM)."""
        ...
