"""The judge contract: score completions in [0, 1] with a rationale.

A judge that can fail (a remote or model judge) marks a verdict it could not obtain with
`dropped=True` when its recipe asks for `fallback: drop`: the scorer then gives that sample no
signal from the judge (it imputes the mean of the sample's prompt group). Such judges also
expose `take_counters() -> dict[str, int]`, their failure counts since the last call, which the
scorer reports per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Verdict:
    score: float  # normalised to [0, 1]
    rationale: str = ""
    dropped: bool = False  # no verdict could be had; `score` is only a neutral placeholder


@runtime_checkable
class Judge(Protocol):
    """Scores a batch. Columns are dataset columns aligned with the completions (TRL style);
    completions that share a prompt form a group, which group-aware rubrics may use."""

    def judge(
        self, prompts: Sequence[str], completions: Sequence[str], **columns: Sequence[Any]
    ) -> list[Verdict]: ...


@runtime_checkable
class CountingJudge(Judge, Protocol):
    """A judge that reports its failure counts (retries, fallbacks, parse failures, ...)."""

    def take_counters(self) -> dict[str, int]: ...
