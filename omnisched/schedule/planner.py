"""Predict each curriculum order's final accuracies from measured transfer; pick the best.

Assumption (stated so users can check it against their runs): training domain a brings a to
its trained level L[a]; every later phase c shifts a by the additive transfer D[c][a]. So
    final[a] = clip(L[a] + sum_{c after a} D[c][a])   and untrained domains keep start + shifts.
Order matters because a phase overwrites what earlier transfer did to its own domain: domains
that others hurt most should come last, domains whose training hurts others should come first.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MAX_EXHAUSTIVE = 8  # 8! = 40320 orders; beyond that a beam search


@dataclass(frozen=True)
class TransferModel:
    current: Mapping[str, float]  # accuracy now, per domain
    level: Mapping[str, float]  # predicted accuracy right after training the domain
    transfer: Mapping[str, Mapping[str, float]]  # transfer[c][a]: shift of a when c is trained


def predict_final(order: Sequence[str], model: TransferModel) -> dict[str, float]:
    """Accuracies after training `order` from `model.current` under the additive assumption."""
    acc = dict(model.current)
    for c in order:
        for a in acc:
            if a != c:
                acc[a] = _clip(acc[a] + model.transfer.get(c, {}).get(a, 0.0))
        acc[c] = _clip(model.level[c])
    return acc


def plan_order(
    remaining: Sequence[str], model: TransferModel, tie_break: Mapping[str, float] | None = None
) -> tuple[list[str], dict[str, float]]:
    """The order of `remaining` with the best predicted mean final accuracy, and its prediction.

    `tie_break[d]` (lower first) orders otherwise equal plans, e.g. structured before open.
    """
    rank = tie_break or {}

    def key(order: Sequence[str]) -> tuple[float, tuple[float, ...]]:
        final = predict_final(order, model)
        return (-round(_mean(final.values()), 9), tuple(rank.get(d, 0.0) for d in order))

    if len(remaining) <= MAX_EXHAUSTIVE:
        best = min(itertools.permutations(remaining), key=key)
    else:
        best = _beam(remaining, key, width=64)
    return list(best), predict_final(best, model)


def plan_blocks(
    blocks: Sequence[Sequence[str]],
    model: TransferModel,
    tie_break: Mapping[str, float] | None = None,
) -> tuple[list[str], dict[str, float]]:
    """The best order that trains every block before the next (e.g. structured, then open).

    Each block is planned from the accuracies the earlier blocks are predicted to leave. Without
    clipping this is exact: later blocks shift an earlier block's domains by a sum that does not
    depend on the later blocks' internal order.
    """
    order: list[str] = []
    current = dict(model.current)
    for block in blocks:
        if not block:
            continue
        step = TransferModel(current=current, level=model.level, transfer=model.transfer)
        part, current = plan_order(block, step, tie_break)
        order += part
    return order, predict_final(order, model)


def _beam(remaining: Sequence[str], key, width: int) -> tuple[str, ...]:
    """Beam search over prefixes, scoring each prefix completed greedily in the given order."""
    beams: list[tuple[str, ...]] = [()]
    for _ in remaining:
        grown = [(*b, d) for b in beams for d in remaining if d not in b]
        grown.sort(key=lambda p: key(p + tuple(d for d in remaining if d not in p)))
        beams = grown[:width]
    return beams[0]


def _clip(x: float) -> float:
    return min(1.0, max(0.0, x))


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0
