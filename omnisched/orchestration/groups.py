"""A GRPO group: one drawn prompt, its G completions and their rewards, kept whole from the draw
to the learner. `group_id` is unique per draw, so the same prompt drawn twice in a step forms
two groups: the scorer imputes dropped judge verdicts within a group and a judge measures
diversity within a group by this id, and advantages are computed per group."""

from __future__ import annotations

from dataclasses import dataclass, field

from omnisched.domains import Example
from omnisched.learner.base import ScoredGroup
from omnisched.rollout.base import Completion


@dataclass
class Group:
    group_id: str
    domain: str
    example: Example
    completions: list[Completion]
    rewards: list[float] = field(default_factory=list)  # hybrid reward per completion
    components: dict[str, list[float]] = field(default_factory=dict)  # per reward component
    reasons: list[str | None] = field(default_factory=list)  # why a completion fell short

    @property
    def has_signal(self) -> bool:
        """Whether its rewards differ: a group whose rewards all tie has zero advantage."""
        return len(set(self.rewards)) > 1

    def scored(self, sampler_logprobs: bool = False) -> ScoredGroup:
        """What the learner needs: token ids and rewards; with `sampler_logprobs`, the engine's
        logprobs too, as the importance ratio's denominator (off-policy training). On-policy
        the learner's own detached logprobs serve (ratio exactly 1, as TRL without vLLM): an
        engine in bf16, or sampling with top-p, reports logprobs the learner would not."""
        first = self.completions[0]
        return ScoredGroup(
            first.prompt_ids,
            [c.token_ids for c in self.completions],
            list(self.rewards),
            self.group_id,
            [c.logprobs for c in self.completions] if sampler_logprobs else None,
            self.domain,
        )
