"""`Score`: a reward that is a plain float (TRL-compatible) and carries why it is what it is."""

from __future__ import annotations


class Score(float):
    """A float reward with an optional `reason` (why it is not full marks), recorded in metrics."""

    __slots__ = ("reason",)

    def __new__(cls, value: float, reason: str | None = None) -> Score:
        obj = super().__new__(cls, value)
        obj.reason = reason
        return obj

    def __repr__(self) -> str:
        return f"Score({float(self)!r}, reason={self.reason!r})"

    def __reduce__(self) -> tuple[type[Score], tuple[float, str | None]]:
        return Score, (float(self), self.reason)


def as_score(value: object) -> Score:
    """A verifier's per-item result as a Score; None (TRL's "does not apply") scores 0."""
    if isinstance(value, Score):
        return value
    if value is None:
        return Score(0.0, "verifier returned None (does not apply)")
    if isinstance(value, bool | int | float):
        return Score(float(value), getattr(value, "reason", None))
    raise TypeError(f"a verifier must return floats, got {type(value).__name__}: {value!r:.80}")
