"""Text verifiers: `exact_match` (normalised first line vs `answer`), and `reasoning_gym`
(the reasoning-gym task's own scorer, for the `gym` domain)."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Any

from rewards.registry import register
from rewards.score import Score


def normalise(text: str) -> str:
    """Lower case, no surrounding punctuation or articles, single spaces."""
    text = text.strip().lower().strip(string.punctuation + " ")
    text = re.sub(r"^(the|a|an)\s+", "", text)
    return " ".join(text.split())


@register("exact_match")
def exact_match_reward(completions: Sequence[str], answer: Sequence[str], **_: Any) -> list[Score]:
    """1.0 when the completion's first non-empty line equals `answer` after normalisation."""
    out = []
    for completion, gold in zip(completions, answer):
        lines = [line for line in completion.splitlines() if line.strip()]
        said = normalise(lines[0]) if lines else ""
        ok = said == normalise(str(gold))
        out.append(Score(1.0) if ok else Score(0.0, f"{said[:60]!r} is not {str(gold)[:60]!r}"))
    return out


@register("reasoning_gym")
def reasoning_gym_reward(completions: Sequence[str], **columns: Any) -> list[float]:
    """The `gym` domain's scorer (columns `gym_task`, `gym_entry`)."""
    from omnisched.domains.gym import score_reasoning_gym

    return score_reasoning_gym(completions, **columns)
