"""How well the planner predicted: predicted vs measured final accuracies, per run and per order.

The additive-transfer planner (planner.py) is only worth trusting when its predictions track
what training then measured; these pure functions give the error of one run's prediction and
the rank agreement between predicted and measured quality across several orders.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omnisched.schedule.state import SchedulerState


def prediction_error(
    predicted: Mapping[str, float], measured: Mapping[str, float]
) -> dict[str, float | dict[str, float]]:
    """Per-domain error (predicted - measured) on the domains both give, and their MAE."""
    common = [d for d in predicted if d in measured]
    if not common:
        raise ValueError("predicted and measured share no domain")
    errors = {d: predicted[d] - measured[d] for d in common}
    return {"errors": errors, "mae": sum(abs(e) for e in errors.values()) / len(errors)}


def order_rank_correlation(
    runs: Sequence[tuple[Mapping[str, float], Mapping[str, float]]],
) -> float | None:
    """Spearman rho between predicted and measured mean final accuracy across orders.

    `runs` holds one (predicted, measured) pair of per-domain accuracies per order. rho is the
    Pearson correlation of the two rank vectors (ties get their average rank); None when it is
    undefined (fewer than 2 orders, or all predicted or all measured means equal).
    """
    if len(runs) < 2:
        return None
    pred = [_mean(p.values()) for p, _ in runs]
    meas = [_mean(m.values()) for _, m in runs]
    return _pearson(_ranks(pred), _ranks(meas))


def _ranks(xs: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    mx, my = _mean(x), _mean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    return sxy / (sxx * syy) ** 0.5


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def online_prediction_mae(state: SchedulerState) -> list[float]:
    """MAE of each decision's predicted final accuracies (made online, when the phase was
    chosen) against the accuracies measured at the end; empty when the policy predicts none."""
    final = state.current()
    if final is None:
        return []
    return [
        float(prediction_error(p.predicted_final, final.accuracy)["mae"])  # type: ignore[arg-type]
        for p in state.phases
        if p.predicted_final
    ]
