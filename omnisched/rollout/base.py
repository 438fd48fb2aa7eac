"""The rollout contract: sample G completions per prompt with token logprobs and entropies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # the driver imports these contracts without loading torch
    import torch


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. `temperature == 0` means greedy decoding (used for evaluation)."""

    n: int = 1
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class Completion:
    """One sampled continuation of one prompt.

    `logprobs[t]` is log p(token_t) under the distribution the token was sampled from (after
    temperature / top-p); `entropies[t]` is the entropy (nats) of the policy's temperature-scaled
    next-token distribution at step t. Both have one entry per completion token (EOS included).
    """

    prompt: str
    text: str
    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    finished: bool = False  # ended with EOS rather than hitting max_new_tokens

    @property
    def mean_entropy(self) -> float:
        return sum(self.entropies) / len(self.entropies) if self.entropies else 0.0


@runtime_checkable
class RolloutEngine(Protocol):
    """A generation backend (HF transformers on CPU, vLLM on GPU)."""

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        """Return, for each prompt, `params.n` completions."""
        ...

    def update_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load new policy weights (weight sync from the learner)."""
        ...
