"""The judge contract: score completions in [0, 1] with a rationale."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Verdict:
    score: float  # normalised to [0, 1]
    rationale: str = ""


@runtime_checkable
class Judge(Protocol):
    """Scores a batch. Columns are dataset columns aligned with the completions (TRL style);
    completions that share a prompt form a group, which group-aware rubrics may use."""

    def judge(
        self, prompts: Sequence[str], completions: Sequence[str], **columns: Sequence[Any]
    ) -> list[Verdict]: ...
