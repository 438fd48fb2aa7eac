"""`Score`: a reward that is a plain float (TRL-compatible) and carries why it is what it is."""

from __future__ import annotations

import math


class Score(float):
    """A float reward with an optional `reason` (why it is not full marks), recorded in metrics.
    `failure` marks a score the verifier never gave: "error" (it raised, or its worker died)
    or "timeout"; the hybrid reward counts those per component instead of passing them off as
    a low reward."""

    __slots__ = ("failure", "reason")

    def __new__(cls, value: float, reason: str | None = None, failure: str | None = None) -> Score:
        obj = super().__new__(cls, value)
        obj.reason = reason
        obj.failure = failure
        return obj

    def __repr__(self) -> str:
        extra = f", failure={self.failure!r}" if self.failure else ""
        return f"Score({float(self)!r}, reason={self.reason!r}{extra})"

    def __reduce__(self) -> tuple[type[Score], tuple[float, str | None, str | None]]:
        return Score, (float(self), self.reason, self.failure)


NOT_APPLICABLE = "does not apply (the verifier returned None)"


def as_score(value: object) -> Score:
    """A verifier's per-item result as a Score. None is TRL's "does not apply": a NaN Score,
    which the hybrid reward leaves out of that sample's weighted mean (`not_applicable`)."""
    if isinstance(value, Score):
        return value
    if value is None:
        return Score(math.nan, NOT_APPLICABLE)
    if isinstance(value, bool | int | float):
        return Score(float(value), getattr(value, "reason", None))
    raise TypeError(f"a verifier must return floats, got {type(value).__name__}: {value!r:.80}")


def not_applicable(value: float) -> bool:
    return math.isnan(value)
