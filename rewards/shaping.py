"""Shaping rewards: `format` (required tags present, well formed, in order) and `length`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from rewards.registry import register
from rewards.score import Score

DEFAULT_TAGS = ("answer",)


def _tags(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return DEFAULT_TAGS
    if isinstance(value, str):
        return tuple(t.strip() for t in value.split(",") if t.strip())
    return tuple(value)


def format_problem(text: str, tags: Sequence[str]) -> str | None:
    """Why `text` does not hold each `<tag>...</tag>` exactly once, in order; None if it does."""
    position = 0
    for tag in tags:
        opens = [m.start() for m in re.finditer(f"<{re.escape(tag)}>", text)]
        closes = [m.start() for m in re.finditer(f"</{re.escape(tag)}>", text)]
        if len(opens) != 1 or len(closes) != 1:
            return f"<{tag}>...</{tag}> must appear exactly once"
        if not position <= opens[0] < closes[0]:
            return f"<{tag}> is out of order or not closed"
        if not text[opens[0] + len(tag) + 2 : closes[0]].strip():
            return f"<{tag}> is empty"
        position = closes[0]
    return None


@register("format")
def format_reward(
    completions: Sequence[str], tags: Sequence[str | Sequence[str] | None] | None = None, **_: Any
) -> list[Score]:
    """1.0 when the completion holds every tag of `tags` (default "answer"; a list or a
    comma-separated string such as "think,answer") exactly once, non-empty, in order."""
    wanted = list(tags or [None] * len(completions))
    out = []
    for text, tag_spec in zip(completions, wanted):
        problem = format_problem(text, _tags(tag_spec))
        out.append(Score(0.0, problem) if problem else Score(1.0))
    return out


def length_score(n: int, max_length: int, buffer: int) -> float:
    """DAPO-style soft overlong penalty in [0, 1]: 1 up to max_length - buffer, then linear to 0
    at max_length, 0 beyond."""
    if n <= max_length - buffer:
        return 1.0
    if n >= max_length:
        return 0.0
    return (max_length - n) / buffer


@register("length")
def length_reward(
    completions: Sequence[str],
    max_length: Sequence[int] | None = None,
    buffer: Sequence[int] | None = None,
    **_: Any,
) -> list[Score]:
    """Length penalty over characters: `max_length` (default 1024) and `buffer` (default 256)."""
    n = len(completions)
    limits = list(max_length or [1024] * n)
    buffers = list(buffer or [256] * n)
    out = []
    for text, limit, buf in zip(completions, limits, buffers):
        if not 0 < int(buf) <= int(limit):
            raise ValueError(f"length: need 0 < buffer <= max_length, got {buf}, {limit}")
        value = length_score(len(text), int(limit), int(buf))
        why = None if value == 1.0 else f"{len(text)} characters (soft limit {limit - buf})"
        out.append(Score(value, why))
    return out
