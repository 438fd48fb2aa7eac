"""Scheduling policies: which domain(s) the next phase trains, with a reason for the record."""

from __future__ import annotations

from dataclasses import dataclass

from omnisched.config.schema import ScheduleConfig
from omnisched.registry import Registry
from omnisched.schedule.estimate import fit
from omnisched.schedule.planner import (
    Estimate,
    TransferModel,
    as_plan,
    plan_blocks,
    plan_difference,
    plan_order,
    predict_final,
    predict_spread,
)
from omnisched.schedule.state import SchedulerState

POLICIES: Registry = Registry("scheduler policy", "omnisched.policies")

OVERRIDE_Z = 1.0  # measured transfer overrides the entropy rule when it wins by > z sd


@dataclass
class Decision:
    """What the next phase trains. `mixture` (domain -> sampling weight, summing to 1) is set by
    online policies that reweight domains every step; `steps` overrides the recipe's
    `steps_per_phase` (probe phases, and regular phases shortened to pay for them)."""

    domains: list[str]
    reason: str
    predicted_final: dict[str, float] | None = None
    mixture: dict[str, float] | None = None
    steps: int | None = None
    probe: bool = False
    planned_order: list[str] | None = None
    predicted_sd: dict[str, float] | None = None  # uncertainty of predicted_final


class Policy:
    """A scheduling policy: `next_phase` decides each phase. Hooks with defaults:
    `extra_phases` (phases it adds to the recipe's count, e.g. probes) and `observe_step`
    (online policies: one step's statistics in, the next step's mixture out; None keeps it).
    A policy keeps what it must remember in `state.policy_state` (saved, resumed)."""

    def __init__(self, cfg: ScheduleConfig) -> None:
        self.cfg = cfg

    def next_phase(self, state: SchedulerState) -> Decision:
        raise NotImplementedError(f"{type(self).__name__} must define next_phase")

    def extra_phases(self, state: SchedulerState) -> int:
        return 0

    def observe_step(
        self, state: SchedulerState, step: int, stats: dict[str, float]
    ) -> dict[str, float] | None:
        return None


@POLICIES.register("joint")
class JointPolicy(Policy):
    """Mix every domain in every step (the paper's joint-training baseline)."""

    def next_phase(self, state: SchedulerState) -> Decision:
        return Decision(list(state.domains), "joint: all domains mixed in every step")


@POLICIES.register("sequential")
class SequentialPolicy(Policy):
    """A fixed order (`schedule.order`, default the recipe's domain order), cycled if needed."""

    def next_phase(self, state: SchedulerState) -> Decision:
        order = self.cfg.order or state.domains
        i = len(state.phases)
        return Decision([order[i % len(order)]], f"sequential: position {i} of {order}")


@POLICIES.register("bwt")
class BWTPolicy(Policy):
    """The paper's BWT-guided curriculum, decided online at every phase boundary.

    Every measured change (with its paired standard error) updates the planner's model
    (`estimate.fit`): headrooms, transfer between domains, and how fragile each domain's
    learned skill is (backward transfer). The planner predicts, for every plan of the phases that
    are left, every domain's final accuracy, and the first domain of the best plan trains next.
    The entropy rule (structured domains before open-ended ones, lower entropy first, since
    entropy-collapsing structured RL erases open-ended gains) decides unless measured transfer
    predicts a better plan by more than OVERRIDE_Z standard deviations of that gain. With
    `schedule.probe_steps > 0`, a short probe phase per domain first measures every row of
    transfer; probes are paid from the run's step budget (phases x steps_per_phase): the
    regular phases are shortened so that the total stays that budget.
    """

    def extra_phases(self, state: SchedulerState) -> int:
        return len(state.domains) if self.cfg.probe_steps > 0 else 0

    def phase_steps(self, state: SchedulerState, index: int) -> int:
        """Steps of regular phase `index` (0-based among regular phases): the budget left
        after probes, split evenly, the remainder to the first phases."""
        n = self.cfg.steps_per_phase
        if self.cfg.probe_steps <= 0:
            return n
        left = state.total_phases * n - len(state.domains) * self.cfg.probe_steps
        base, extra = divmod(left, state.total_phases)
        return max(base + (index < extra), 1)

    def next_phase(self, state: SchedulerState) -> Decision:
        probe = self._probe(state)
        if probe is not None:
            return probe
        regular = [p for p in state.phases if not p.probe]
        steps = self.phase_steps(state, len(regular))
        x = steps / self.cfg.steps_per_phase
        left = max(state.total_phases - len(regular), 1)
        model = fit(state, self.cfg.steps_per_phase)
        trained = {p.trained[0] for p in regular if len(p.trained) == 1}
        remaining = [d for d in state.domains if d not in trained]
        if not remaining:  # more phases than domains: one more phase where it gains most
            return self._revisit(state, model, steps, x)
        measured = bool(state.completed())
        rank = prior_rank(state)
        best, _ = plan_order(remaining, model, rank, left, x)
        structured = [d for d in remaining if state.kinds.get(d) != "open"]
        open_ = [d for d in remaining if state.kinds.get(d) == "open"]
        ruled, _ = plan_blocks([structured, open_], model, rank, left, x)
        gap = plan_difference(as_plan(best, x), as_plan(ruled, x), model)
        if not measured:
            order, why = ruled, "bwt[entropy rule]: nothing measured yet, structured first"
        elif best == ruled:
            order, why = best, "bwt[transfer agrees with the entropy rule]"
        elif gap.mean > OVERRIDE_Z * gap.sd:
            order = best
            why = (
                f"bwt[transfer overrides entropy rule]: beats structured-first order {ruled} "
                f"by {_pts(gap)}"
            )
        else:
            order = ruled
            why = (
                f"bwt[entropy rule]: transfer's best order {best} wins by only {_pts(gap)}, "
                "within its uncertainty"
            )
        spread = predict_spread(as_plan(order, x), model)
        mean = Estimate(
            sum(e.mean for e in spread.values()) / len(spread),
            sum(e.var for e in spread.values()) / len(spread) ** 2,
        )
        reason = f"{why}; order {order} predicted mean final {mean.mean:.3f} +- {mean.sd:.3f}"
        return Decision(
            [order[0]],
            reason,
            predicted_final={d: e.mean for d, e in spread.items()},
            steps=steps if steps != self.cfg.steps_per_phase else None,
            planned_order=order,
            predicted_sd={d: e.sd for d, e in spread.items()},
        )

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
            f"({self.cfg.probe_steps} steps, paid from the regular phases) to measure its "
            "transfer"
        )
        return Decision([todo[0]], reason, steps=self.cfg.probe_steps, probe=True)

    def _revisit(
        self, state: SchedulerState, model: TransferModel, steps: int, x: float
    ) -> Decision:
        gains = {d: predict_final([(d, x)], model)[d] - model.current[d] for d in state.domains}
        d = max(gains, key=lambda k: gains[k])
        reason = (
            f"bwt[revisit]: every domain trained once; '{d}' is predicted to gain most "
            f"({gains[d]:+.3f})"
        )
        return Decision([d], reason, steps=steps if steps != self.cfg.steps_per_phase else None)


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


def estimate_transfer(state: SchedulerState, full_steps: int) -> TransferModel:
    """The planner's model of `state`'s measurements (`estimate.fit`)."""
    return fit(state, full_steps)


def _pts(gap: Estimate) -> str:
    return f"{100 * gap.mean:+.2f} +- {100 * gap.sd:.2f} points"
