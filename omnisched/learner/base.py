"""The learner contract: GRPO optimizer steps on scored, advantage-weighted samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # the driver imports these contracts without loading torch
    import torch


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


@dataclass
class ScoredGroup:
    """The G completions of one prompt with their rewards, before advantages are computed."""

    prompt_ids: list[int]
    completion_ids: list[list[int]]
    rewards: list[float]


@runtime_checkable
class Learner(Protocol):
    """A training backend (plain torch on CPU, DeepSpeed ZeRO on GPU)."""

    def train_step(self, samples: Sequence[TrainSample]) -> dict[str, float]:
        """One optimizer step on the samples; returns scalar metrics (loss, kl, grad_norm...)."""
        ...

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Current policy weights, for syncing rollout engines."""
        ...

    def save(self, path: Path) -> None:
        """Write the policy as an HF model folder (loadable by transformers, TRL and vLLM)."""
        ...
