"""Scheduling policies: which domain(s) the next phase trains, with a reason for the record."""

from __future__ import annotations

from dataclasses import dataclass

from omnisched.config.schema import ScheduleConfig
from omnisched.registry import Registry
from omnisched.schedule.estimate import fit
from omnisched.schedule.planner import (
    Estimate,
    Plan,
    TransferModel,
    as_plan,
    plan_blocks,
    plan_difference,
    plan_lengths,
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
    planned_steps: list[int] | None = None  # steps of each phase of planned_order


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
    regular phases are shortened so that the total stays that budget. With
    `schedule.plan_lengths` (default), the planner also chooses how that budget is split over
    the phases left (`planner.plan_lengths`: later phases longer where the measured forgetting
    makes early gains fade, never under a quarter phase), under the same uncertainty rule.
    """

    def extra_phases(self, state: SchedulerState) -> int:
        return len(state.domains) if self.probe_steps(state) > 0 else 0

    def probe_steps(self, state: SchedulerState) -> int:
        """`schedule.probe_steps`, or when unset a quarter phase per domain if the probes
        leave at least half of the budget (phases x steps_per_phase) to the regular phases."""
        if self.cfg.probe_steps is not None:
            return self.cfg.probe_steps
        n = self.cfg.steps_per_phase
        quarter = n // 4
        return quarter if 2 * quarter * len(state.domains) <= state.total_phases * n else 0

    def next_phase(self, state: SchedulerState) -> Decision:
        probe = self._probe(state)
        if probe is not None:
            return probe
        n = self.cfg.steps_per_phase
        regular = [p for p in state.phases if not p.probe]
        left = max(state.total_phases - len(regular), 1)
        # the run's budget (phases x steps_per_phase) less every step already run, probes too
        budget = max(state.total_phases * n - sum(p.steps for p in state.phases), left)
        x = budget / left / n  # phase-equivalents of each phase left, at equal lengths
        model = fit(state, n)
        trained = {p.trained[0] for p in regular if len(p.trained) == 1}
        remaining = [d for d in state.domains if d not in trained]
        if not remaining:  # more phases than domains: one more phase where it gains most
            return self._revisit(state, model, budget // left, n)
        order, why = self._order(state, model, remaining, left, x)
        # this pass over the untrained domains gets its share of the budget; phases beyond it
        # (more phases than domains) revisit domains with the rest
        share = budget * len(order) // left if len(order) < left else budget
        plan, lengths_why = self._lengths(model, order[:left], share, n)
        steps = round(plan[0][1] * n)
        spread = predict_spread(plan, model)
        mean = Estimate(
            sum(e.mean for e in spread.values()) / len(spread),
            sum(e.var for e in spread.values()) / len(spread) ** 2,
        )
        reason = (
            f"{why}; order {order}{lengths_why}; predicted mean final "
            f"{mean.mean:.3f} +- {mean.sd:.3f}"
        )
        return Decision(
            [order[0]],
            reason,
            predicted_final={d: e.mean for d, e in spread.items()},
            steps=steps if steps != n else None,
            planned_order=order,
            predicted_sd={d: e.sd for d, e in spread.items()},
            planned_steps=[round(xi * n) for _, xi in plan],
        )

    def _order(
        self,
        state: SchedulerState,
        model: TransferModel,
        remaining: list[str],
        left: int,
        x: float,
    ) -> tuple[list[str], str]:
        """The order of the remaining domains (at equal lengths) and the rule that decided."""
        rank = prior_rank(state)
        best, _ = plan_order(remaining, model, rank, left, x)
        structured = [d for d in remaining if state.kinds.get(d) != "open"]
        open_ = [d for d in remaining if state.kinds.get(d) == "open"]
        ruled, _ = plan_blocks([structured, open_], model, rank, left, x)
        if not state.completed():
            return ruled, "bwt[entropy rule]: nothing measured yet, structured first"
        if best == ruled:
            return best, "bwt[transfer agrees with the entropy rule]"
        gap = plan_difference(as_plan(best, x), as_plan(ruled, x), model)
        if gap.mean > OVERRIDE_Z * gap.sd:
            return best, (
                f"bwt[transfer overrides entropy rule]: beats structured-first order {ruled} "
                f"by {_pts(gap)}"
            )
        return ruled, (
            f"bwt[entropy rule]: transfer's best order {best} wins by only {_pts(gap)}, "
            "within its uncertainty"
        )

    def _lengths(
        self, model: TransferModel, order: list[str], budget: int, n: int
    ) -> tuple[Plan, str]:
        """The phase lengths of `order` (steps summing to `budget`): equal, unless
        `schedule.plan_lengths` is on and the model predicts another profile (later phases
        longer where forgetting eats early gains) better by more than OVERRIDE_Z sd."""
        best, equal = plan_lengths(order, model, budget, n, min_steps=max(1, n // 4))
        if not self.cfg.plan_lengths or best == equal:
            return equal, ""
        gap = plan_difference(best, equal, model)
        lengths = [round(xi * n) for _, xi in best]
        if gap.mean > OVERRIDE_Z * gap.sd:
            return best, f", steps {lengths} (beat equal lengths by {_pts(gap)})"
        return equal, f", equal lengths (steps {lengths} win by only {_pts(gap)})"

    def _probe(self, state: SchedulerState) -> Decision | None:
        """The next short probe phase, while some domain has not been probed yet."""
        steps = self.probe_steps(state)
        if steps <= 0:
            return None
        probed = {p.trained[0] for p in state.phases if p.probe}
        rank = prior_rank(state)
        todo = sorted((d for d in state.domains if d not in probed), key=lambda d: rank[d])
        if not todo:
            return None
        reason = (
            f"bwt[probe]: probe {len(probed) + 1}/{len(state.domains)} on '{todo[0]}' "
            f"({steps} steps, paid from the regular phases) to measure its transfer and headroom"
        )
        return Decision([todo[0]], reason, steps=steps, probe=True)

    def _revisit(self, state: SchedulerState, model: TransferModel, steps: int, n: int) -> Decision:
        x = steps / n
        gains = {d: predict_final([(d, x)], model)[d] - model.current[d] for d in state.domains}
        d = max(gains, key=lambda k: gains[k])
        reason = (
            f"bwt[revisit]: every domain trained once; '{d}' is predicted to gain most "
            f"({gains[d]:+.3f})"
        )
        return Decision([d], reason, steps=steps if steps != n else None)


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
