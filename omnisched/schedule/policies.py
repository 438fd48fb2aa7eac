"""Scheduling policies: which domain(s) the next phase trains, with a reason for the record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from omnisched.config.schema import ScheduleConfig
from omnisched.registry import Registry
from omnisched.schedule.planner import TransferModel, plan_order
from omnisched.schedule.state import SchedulerState

POLICIES: Registry = Registry("scheduler policy", "omnisched.policies")

PRIOR_SELF_GAIN = 0.1  # assumed gain of training an unmeasured domain, before any phase ran


@dataclass
class Decision:
    domains: list[str]
    reason: str
    predicted_final: dict[str, float] | None = None


class Policy(Protocol):
    def next_phase(self, state: SchedulerState) -> Decision: ...


@POLICIES.register("joint")
class JointPolicy:
    """Mix every domain in every step (the paper's joint-training baseline)."""

    def __init__(self, cfg: ScheduleConfig) -> None:
        self.cfg = cfg

    def next_phase(self, state: SchedulerState) -> Decision:
        return Decision(list(state.domains), "joint: all domains mixed in every step")


@POLICIES.register("sequential")
class SequentialPolicy:
    """A fixed order (`schedule.order`, default the recipe's domain order), cycled if needed."""

    def __init__(self, cfg: ScheduleConfig) -> None:
        self.cfg = cfg

    def next_phase(self, state: SchedulerState) -> Decision:
        order = self.cfg.order or state.domains
        i = len(state.phases)
        return Decision([order[i % len(order)]], f"sequential: position {i} of {order}")


@POLICIES.register("bwt")
class BWTPolicy:
    """The paper's BWT-guided curriculum, decided online at every phase boundary.

    Transfer D[c][a] is measured from the phases run so far (the change of a's accuracy during
    c's phase); for a domain c not yet trained, D[c][a] is a's mean measured shift under the
    other phases (how vulnerable a has proved), 0 before any phase.
    The planner (planner.py) predicts every remaining order's final accuracies and the first
    domain of the best order is trained next. Ties put structured domains before open-ended
    ones: entropy-reducing structured training then cannot erase gains on open-ended domains.
    """

    def __init__(self, cfg: ScheduleConfig) -> None:
        self.cfg = cfg

    def next_phase(self, state: SchedulerState) -> Decision:
        model = estimate_transfer(state)
        trained = {p.trained[0] for p in state.phases if len(p.trained) == 1}
        remaining = [d for d in state.domains if d not in trained]
        if not remaining:  # more phases than domains: retrain the most forgotten domain
            return self._revisit(state, model)
        tie = {d: (1.0 if state.kinds.get(d) == "open" else 0.0) for d in remaining}
        order, predicted = plan_order(remaining, model, tie)
        mean = sum(predicted.values()) / len(predicted)
        return Decision(
            [order[0]],
            f"bwt: order {order} has the best predicted mean final accuracy {mean:.3f}",
            predicted,
        )

    def _revisit(self, state: SchedulerState, model: TransferModel) -> Decision:
        drop = {d: model.level[d] - model.current[d] for d in state.domains}
        d = max(drop, key=lambda k: drop[k])
        return Decision([d], f"bwt: every domain trained once; '{d}' forgot most ({drop[d]:+.3f})")


def estimate_transfer(state: SchedulerState) -> TransferModel:
    """Levels and transfer from completed phases; priors fill what is not yet measured."""
    now = state.current()
    current = dict(now.accuracy) if now else {d: 0.0 for d in state.domains}
    before = state.baseline.accuracy if state.baseline else current
    level: dict[str, float] = {}
    transfer: dict[str, dict[str, float]] = {}
    gains: list[float] = []
    for p in state.completed():
        if len(p.trained) != 1:
            before = p.result.accuracy  # type: ignore[union-attr]
            continue
        c, after = p.trained[0], p.result.accuracy  # type: ignore[union-attr]
        level[c] = after[c]
        gains.append(after[c] - before[c])
        transfer[c] = {a: after[a] - before[a] for a in state.domains if a != c}
        before = after
    self_gain = sum(gains) / len(gains) if gains else PRIOR_SELF_GAIN
    vulnerability = _column_means(transfer, state.domains)
    for d in state.domains:
        level.setdefault(d, current[d] + self_gain)
        transfer.setdefault(d, {a: vulnerability[a] for a in state.domains if a != d})
    return TransferModel(current=current, level=level, transfer=transfer)


def _column_means(transfer: dict[str, dict[str, float]], domains: list[str]) -> dict[str, float]:
    """Mean measured shift of each domain when others train (its vulnerability); the global
    mean where a domain has no measurement yet, 0 before any phase."""
    measured = [v for row in transfer.values() for v in row.values()]
    overall = sum(measured) / len(measured) if measured else 0.0
    out = {}
    for a in domains:
        col = [row[a] for c, row in transfer.items() if a in row]
        out[a] = sum(col) / len(col) if col else overall
    return out
