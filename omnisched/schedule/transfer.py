"""Continual-learning measurements as pure functions over accuracy matrices.

R is a list of rows: R[i][j] = accuracy (in [0, 1]) on domain j after phase i, with columns in
the order the domains were trained (column j = the domain trained in phase j).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

Matrix = Sequence[Sequence[float]]


def _check_square(R: Matrix) -> int:
    T = len(R)
    if T == 0 or any(len(row) < T for row in R):
        raise ValueError("R needs T rows of at least T columns (phase i x domain trained at j)")
    return T


def backward_transfer(R: Matrix) -> float:
    """BWT = 1/(T-1) * sum_{j<T-1} (R[T-1][j] - R[j][j])  (Lopez-Paz & Ranzato, 2017)."""
    T = _check_square(R)
    if T < 2:
        return 0.0
    return sum(R[T - 1][j] - R[j][j] for j in range(T - 1)) / (T - 1)


def forward_transfer(R: Matrix, baseline: Sequence[float]) -> float:
    """FWT = 1/(T-1) * sum_{j>=1} (R[j-1][j] - baseline[j]): what earlier phases gave domain j."""
    T = _check_square(R)
    if len(baseline) < T:
        raise ValueError("baseline needs one accuracy per trained domain")
    if T < 2:
        return 0.0
    return sum(R[j - 1][j] - baseline[j] for j in range(1, T)) / (T - 1)


def phase_deltas(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """Change of every domain's accuracy across one phase: the row D[a][.] when phase trained a."""
    return {d: after[d] - before[d] for d in after if d in before}


def sample_forgetting(before: Sequence[int], after: Sequence[int]) -> dict[str, int]:
    """Per-item transitions between two evaluations of the same items (1 = correct)."""
    if len(before) != len(after):
        raise ValueError("both evaluations must score the same items")
    forgotten = sum(1 for b, a in zip(before, after) if b and not a)
    gained = sum(1 for b, a in zip(before, after) if a and not b)
    return {"forgotten": forgotten, "gained": gained, "items": len(before)}
