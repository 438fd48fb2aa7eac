"""Scheduling policies: which domain(s) the next phase trains, with a reason for the record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from omnisched.config.schema import ScheduleConfig
from omnisched.registry import Registry
from omnisched.schedule.planner import TransferModel, plan_blocks, plan_order
from omnisched.schedule.state import SchedulerState

POLICIES: Registry = Registry("scheduler policy", "omnisched.policies")

PRIOR_SELF_GAIN = 0.1  # assumed gain of training an unmeasured domain, before any phase ran
OVERRIDE_MARGIN = 0.005  # predicted mean accuracy measured transfer must win by to break the rule


@dataclass
class Decision:
    """What the next phase trains. `mixture` (domain -> sampling weight, summing to 1) is set by
    online policies that reweight domains every step; `steps` overrides the recipe's
    `steps_per_phase` (short probe phases)."""

    domains: list[str]
    reason: str
    predicted_final: dict[str, float] | None = None
    mixture: dict[str, float] | None = None
    steps: int | None = None
    probe: bool = False
    planned_order: list[str] | None = None


class Policy(Protocol):
    """A scheduling policy. Optional hooks: `extra_phases(state) -> int` (phases it adds to the
    recipe's count, e.g. probes) and `observe_step(state, step, stats) -> dict[str, float]`
    (online policies: per-step statistics in, next step's mixture out)."""

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

    Transfer D[c][a] is measured from the phases run so far (transfer.transfer_matrix, rescaled
    to a full phase); with `schedule.probe_steps > 0` the first len(domains) phases are short
    probes, one per domain, that measure every row of D before the curriculum starts. The
    planner predicts every remaining order's final accuracies under the additive-transfer
    assumption and the first domain of the best order is trained next.
    Entropy rule: structured domains go before open-ended ones (lower measured entropy first
    within a kind), since entropy-collapsing structured RL would otherwise erase open-ended
    gains; measured transfer overrides the rule when an order that breaks it is predicted
    better by more than OVERRIDE_MARGIN. The reason names the rule that decided.
    """

    def __init__(self, cfg: ScheduleConfig) -> None:
        self.cfg = cfg

    def extra_phases(self, state: SchedulerState) -> int:
        return len(state.domains) if self.cfg.probe_steps > 0 else 0

    def next_phase(self, state: SchedulerState) -> Decision:
        probe = self._probe(state)
        if probe is not None:
            return probe
        model = estimate_transfer(state, self.cfg.steps_per_phase)
        trained = {p.trained[0] for p in state.phases if len(p.trained) == 1 and not p.probe}
        remaining = [d for d in state.domains if d not in trained]
        if not remaining:  # more phases than domains: retrain the most forgotten domain
            return self._revisit(state, model)
        rank = prior_rank(state)
        best, best_pred = plan_order(remaining, model, rank)
        structured = [d for d in remaining if state.kinds.get(d) != "open"]
        open_ = [d for d in remaining if state.kinds.get(d) == "open"]
        if not (structured and open_):
            reason = f"bwt[transfer]: order {best} has the best predicted mean final accuracy"
            reason += f" {_mean(best_pred):.3f}"
            return Decision([best[0]], reason, best_pred, planned_order=best)
        ruled, ruled_pred = plan_blocks([structured, open_], model, rank)
        if _mean(best_pred) > _mean(ruled_pred) + OVERRIDE_MARGIN:
            reason = (
                f"bwt[transfer overrides entropy rule]: order {best} predicted mean "
                f"{_mean(best_pred):.3f} beats structured-first order {ruled} at "
                f"{_mean(ruled_pred):.3f}"
            )
            return Decision([best[0]], reason, best_pred, planned_order=best)
        reason = (
            f"bwt[entropy rule]: structured before open-ended, lower entropy first; order {ruled} "
            f"predicted mean {_mean(ruled_pred):.3f} (best of any order {_mean(best_pred):.3f})"
        )
        return Decision([ruled[0]], reason, ruled_pred, planned_order=ruled)

    def _probe(self, state: SchedulerState) -> Decision | None:
        """The next short probe phase, while some domain has not been probed yet."""
        if self.cfg.probe_steps <= 0:
            return None
        probed = {p.trained[0] for p in state.phases if p.probe}
        rank = prior_rank(state)
        todo = sorted((d for d in state.domains if d not in probed), key=lambda d: rank[d])
        if not todo:
            return None
        reason = (
            f"bwt[probe]: probe {len(probed) + 1}/{len(state.domains)} on '{todo[0]}' "
            f"({self.cfg.probe_steps} steps) to measure its transfer"
        )
        return Decision([todo[0]], reason, steps=self.cfg.probe_steps, probe=True)

    def _revisit(self, state: SchedulerState, model: TransferModel) -> Decision:
        drop = {d: model.level[d] - model.current[d] for d in state.domains}
        d = max(drop, key=lambda k: drop[k])
        return Decision([d], f"bwt: every domain trained once; '{d}' forgot most ({drop[d]:+.3f})")


def prior_rank(state: SchedulerState) -> dict[str, float]:
    """The entropy rule as a rank (lower trains first): structured before open, then lower
    current entropy, then recipe order."""
    now = state.current()
    entropy = now.entropy if now else {}
    keyed = sorted(
        state.domains,
        key=lambda d: (
            state.kinds.get(d) == "open",
            entropy.get(d, 0.0),
            state.domains.index(d),
        ),
    )
    return {d: float(i) for i, d in enumerate(keyed)}


def estimate_transfer(state: SchedulerState, full_steps: int | None = None) -> TransferModel:
    """Levels and transfer from completed phases (rescaled to `full_steps`-step phases when
    given); priors fill what is not yet measured.

    level[c] is c's accuracy right after its last full phase, else current + D[c][c] (probed),
    else current + the mean measured self-gain (PRIOR_SELF_GAIN before any phase). An unmeasured
    row D[c][.] takes each domain's mean measured shift under the other phases (how vulnerable it
    has proved), 0 before any phase.
    """
    now = state.current()
    current = dict(now.accuracy) if now else {d: 0.0 for d in state.domains}
    D = state.transfer_matrix(full_steps)
    level: dict[str, float] = {}
    for p in state.completed():
        if len(p.trained) == 1 and not p.probe:
            level[p.trained[0]] = p.result.accuracy[p.trained[0]]  # type: ignore[union-attr]
    gains = [row[a] for a, row in D.items() if a in row]
    self_gain = sum(gains) / len(gains) if gains else PRIOR_SELF_GAIN
    transfer = {c: {a: v for a, v in row.items() if a != c} for c, row in D.items()}
    vulnerability = _column_means(transfer, state.domains)
    for d in state.domains:
        level.setdefault(d, current[d] + (D[d].get(d, self_gain) if d in D else self_gain))
        transfer.setdefault(d, {a: vulnerability[a] for a in state.domains if a != d})
    return TransferModel(current=current, level=level, transfer=transfer)


def _mean(xs: dict[str, float]) -> float:
    return sum(xs.values()) / len(xs) if xs else 0.0


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
