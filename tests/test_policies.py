"""Policies end to end through the SchedulerService: bwt (probes paid from the budget, the
phases that are left, the entropy rule and when measured transfer may override it, reasons and
uncertainty), the online mixtures (uniform start, bounded, what moves them), the policy base
class. The simulator benchmark (tests/test_simulate.py) judges them on many worlds."""

import math

import pytest

from omnisched.config.schema import ScheduleConfig
from omnisched.errors import PluginError
from omnisched.orchestration.services import SchedulerService
from omnisched.schedule import POLICIES, Decision, Evaluation, SchedulerState
from omnisched.schedule.bandit import HIGH, LOW, bounded_softmax, progress_z
from omnisched.schedule.planner import Estimate, TransferModel, plan_order, predict_final

FULL = 20
KINDS = {"math": "structured", "code": "structured", "creative": "open"}


def service(policy="bwt", kinds=KINDS, phases=None, steps=FULL, **cfg) -> SchedulerService:
    """A service without probes unless `probe_steps` is given (None: the default probes)."""
    if policy == "bwt":
        cfg.setdefault("probe_steps", 0)
    state = SchedulerState(list(kinds), dict(kinds), policy, phases or len(kinds))
    cfg = ScheduleConfig(policy=policy, steps_per_phase=steps, **cfg)
    return SchedulerService(state, cfg, None)


def uniform_world(kinds) -> TransferModel:
    """Every domain alike: some headroom, fragile fresh skill, no transfer."""
    zero = Estimate(0.0)
    names = list(kinds)
    return TransferModel(
        current=dict.fromkeys(names, 0.3),
        headroom={d: Estimate(0.3) for d in names},
        transfer={c: {b: zero for b in names if b != c} for c in names},
        fragility={b: {"structured": Estimate(0.4), "open": Estimate(0.4)} for b in names},
        kinds=dict(kinds),
    )


def world(kinds=KINDS) -> TransferModel:
    """A simulated world in the planner's own dynamics: creative's training harms the
    structured domains, whose learned skill is fragile; structured-first is wrong here."""
    zero = Estimate(0.0)
    names = list(kinds)
    transfer = {c: {b: zero for b in names if b != c} for c in names}
    for b in ("math", "code"):
        transfer["creative"][b] = Estimate(-0.06)
    fragility = {b: {"structured": Estimate(0.6), "open": Estimate(0.6)} for b in names}
    fragility["creative"] = {"structured": zero, "open": zero}
    return TransferModel(
        current={"math": 0.2, "code": 0.25, "creative": 0.3},
        headroom={"math": Estimate(0.5), "code": Estimate(0.4), "creative": Estimate(0.3)},
        transfer=transfer,
        fragility=fragility,
        kinds=dict(kinds),
    )


def items(acc: float, n: int = 128) -> list[float]:
    """n item scores with mean `acc` (paired changes of such lists are noise-free)."""
    return [acc + (0.05 if i % 2 else -0.05) for i in range(n)]


def drive(
    svc: SchedulerService, truth: TransferModel, full: int = FULL
) -> tuple[list[Decision], TransferModel]:
    """The controller's calls, with phases simulated by `truth` and exact evaluations."""
    from omnisched.schedule.planner import advance

    def ev(m):
        return Evaluation(
            dict(m.current),
            dict.fromkeys(m.current, 1.0),
            {d: items(v) for d, v in m.current.items()},
        )

    svc.record_baseline(ev(truth))
    decisions = []
    for _ in range(svc.planned_phases()):
        d = svc.next_phase()
        steps = d.steps or full
        truth = advance(truth, ((d.domains[0], steps / full),))
        svc.finish_phase(steps, ev(truth))
        decisions.append(d)
    return decisions, truth


def test_probes_come_first_and_are_paid_from_the_regular_phases():
    svc = service(probe_steps=5, plan_lengths=False)
    assert svc.planned_phases() == 6
    decisions, _ = drive(svc, world())
    probes, regular = decisions[:3], decisions[3:]
    assert [d.domains[0] for d in probes] == ["math", "code", "creative"]  # the entropy rule
    assert all(d.probe and d.steps == 5 and "bwt[probe]" in d.reason for d in probes)
    assert [d.steps for d in regular] == [15, 15, 15]  # (3 x 20 - 3 x 5) / 3
    assert sum(d.steps or FULL for d in decisions) == 3 * FULL


def test_default_probes_are_a_quarter_phase_while_they_leave_half_the_budget():
    cfg = ScheduleConfig(steps_per_phase=FULL)  # probe_steps unset
    state = SchedulerState(list(KINDS), dict(KINDS), "bwt", 3)
    assert SchedulerService(state, cfg, None).planned_phases() == 6  # 3 probes of 5 steps
    two = SchedulerState(list(KINDS), dict(KINDS), "bwt", 1)  # 15 of 20 steps: too many
    svc = SchedulerService(two, cfg, None)
    assert svc.planned_phases() == 1 and svc.policy.probe_steps(two) == 0


def test_planned_lengths_spend_the_budget_late_where_early_gains_are_forgotten():
    """In a world whose structured skill is fragile (60% of fresh skill lost per phase of
    other training), later phases get more of the same budget, and the world ends better
    than with equal phases; every phase keeps at least a quarter phase."""
    finals = {}
    for planned in (True, False):
        decisions, truth = drive(service(probe_steps=5, plan_lengths=planned), world())
        regular = [d for d in decisions if not d.probe]
        steps = [d.steps or FULL for d in regular]
        assert sum(steps) == 3 * FULL - 3 * 5 and min(steps) >= FULL // 4
        finals[planned] = sum(truth.current.values()) / 3
        if planned:
            assert steps[-1] > steps[0] and "beat equal lengths by" in regular[0].reason
            plan = regular[0].planned_steps  # the whole plan; later decisions re-plan the rest
            assert len(plan) == 3 and sum(plan) == sum(steps) and plan[0] == steps[0]
    assert finals[True] > finals[False] + 0.005


def test_ramp_lengths_sum_to_the_budget():
    from omnisched.schedule.planner import ramp_lengths

    assert ramp_lengths(3, 45, 0.0) == [15, 15, 15]
    assert ramp_lengths(4, 80, 0.5) == [10, 17, 23, 30]  # 0.5 : 0.83 : 1.17 : 1.5
    assert ramp_lengths(4, 6, 0.0) == [2, 2, 1, 1]  # rounding halves to even once lost a step
    assert ramp_lengths(1, 7, 0.75) == [7]
    assert ramp_lengths(3, 2, 0.0) is None  # a phase would get no step
    assert ramp_lengths(4, 5, 0.75) is None  # the first phase's 0.3 steps
    for phases in range(1, 7):
        for budget in range(phases, 60):
            equal = ramp_lengths(phases, budget, 0.0)
            assert sum(equal) == budget and max(equal) - min(equal) <= 1  # never None
            for ramp in (-0.5, 0.25, 0.75):
                lengths = ramp_lengths(phases, budget, ramp)
                assert lengths is None or (sum(lengths) == budget and min(lengths) >= 1)


@pytest.mark.parametrize(
    ("domains", "phases", "steps", "probes"),
    [(2, 4, 8, 0), (3, 5, 4, 0), (5, 4, 4, 2), (3, 2, 5, 0), (4, 4, 12, None), (3, 7, 3, None)],
)
def test_bwt_spends_exactly_the_budget(domains, phases, steps, probes):
    """phases x steps_per_phase steps in all, probes included, whatever the counts: more
    phases than domains (revisits), fewer, steps that do not split evenly."""
    kinds = {f"d{i}": "open" if i == domains - 1 else "structured" for i in range(domains)}
    svc = service(kinds=kinds, phases=phases, steps=steps, probe_steps=probes)
    decisions, _ = drive(svc, uniform_world(kinds), steps)
    assert sum(d.steps or steps for d in decisions) == phases * steps
    assert all((d.steps or steps) >= 1 for d in decisions)


def test_the_entropy_rule_decides_until_something_is_measured():
    svc = service()
    svc.record_baseline(
        Evaluation(
            {"math": 0.2, "code": 0.2, "creative": 0.3}, {"math": 0.9, "code": 0.4, "creative": 2.0}
        )
    )
    first = svc.next_phase()
    assert first.domains == ["code"]  # structured first, lower entropy first
    assert first.reason.startswith("bwt[entropy rule]: nothing measured yet")
    assert first.planned_order == ["code", "math", "creative"]
    assert set(first.predicted_sd) == set(KINDS) and all(v > 0 for v in first.predicted_sd.values())


def test_measured_transfer_overrides_the_rule_when_it_wins_beyond_its_uncertainty():
    decisions, _ = drive(service(probe_steps=5), world())
    after_probes = decisions[3]
    assert "bwt[transfer overrides entropy rule]" in after_probes.reason
    assert after_probes.domains == ["creative"]
    assert "+-" in after_probes.reason  # the gain is stated with its uncertainty
    # the order taken is the best one in this world (brute force over the truth's orders)
    chosen = [d.domains[0] for d in decisions[3:]]
    assert chosen[0] == "creative"


def test_the_rule_stands_when_transfer_is_not_measured_well_enough():
    """Same world, but the probes' changes carry the noise of 128 real items (variance 0.25
    per item): the measured advantage of open-first is within its uncertainty."""
    svc = service(probe_steps=5)
    truth = world()
    import random

    from omnisched.schedule.planner import advance

    rng = random.Random(0)

    def ev(m, _shift: int):
        """128 items per domain whose paired changes carry real noise: 30 flips each way."""
        out = {}
        for d in m.current:
            xs = [float(i % 2) for i in range(128)]
            for i in rng.sample(range(0, 128, 2), 30) + rng.sample(range(1, 128, 2), 30):
                xs[i] = 1.0 - xs[i]
            out[d] = xs
        return Evaluation(dict(m.current), dict.fromkeys(m.current, 1.0), out)

    svc.record_baseline(ev(truth, 0))
    for k in range(3):
        d = svc.next_phase()
        truth = advance(truth, ((d.domains[0], d.steps / FULL),))
        svc.finish_phase(d.steps, ev(truth, k + 1))
    decision = svc.next_phase()
    assert decision.reason.startswith(("bwt[entropy rule]", "bwt[transfer agrees"))


def test_bwt_plans_only_the_phases_that_are_left():
    """The issue's bug: with schedule.phases < domains the planner optimised a full order and
    ran its prefix. Two phases of three domains: the plan is the best two-phase plan."""
    svc = service(phases=2)
    decisions, _ = drive(svc, world())
    assert len(decisions) == 2
    assert all(len(d.planned_order) <= 2 for d in decisions)
    assert len(decisions[0].planned_order) == 2


def test_more_phases_than_domains_revisit_where_the_gain_is_largest():
    svc = service(phases=4)
    decisions, _ = drive(svc, world())
    assert "bwt[revisit]" in decisions[3].reason


def test_policy_plugins_must_subclass_the_base_class():
    class NotAPolicy:
        def __init__(self, cfg):
            pass

        def next_phase(self, state):
            return Decision(state.domains, "x")

    POLICIES.add("not_a_policy", NotAPolicy, replace=True)
    with pytest.raises(PluginError, match=r"must subclass omnisched\.schedule\.Policy"):
        service("not_a_policy")


# ---- online mixtures --------------------------------------------------------------------------
def stats(step: int, rewards: dict[str, float], adv: dict[str, float] | None = None) -> dict:
    out = {f"reward/{d}": r for d, r in rewards.items()}
    out.update({f"adv_abs/{d}": v for d, v in (adv or {}).items()})
    return {**out, "entropy": 1.0, "domains": "+".join(rewards)}


@pytest.mark.parametrize("policy", ["bandit", "learnability", "tac"])
def test_online_policies_start_uniform_and_count_exposure(policy):
    svc = service(policy)
    svc.record_baseline(Evaluation(dict.fromkeys(KINDS, 0.3), dict.fromkeys(KINDS, 1.0)))
    first = svc.next_phase()
    assert first.mixture == pytest.approx(dict.fromkeys(KINDS, 1 / 3))
    for step in range(1, 11):
        mix = svc.observe_step(
            step, stats(step, dict.fromkeys(KINDS, 0.5), dict.fromkeys(KINDS, 0.8))
        )
        assert sum(mix.values()) == pytest.approx(1.0)
    assert sum(svc.state.phases[-1].exposure.values()) == pytest.approx(10)
    assert svc.observe_step(5, stats(5, dict.fromkeys(KINDS, 0.0))) == mix  # a replay: ignored


def test_bandit_gives_the_stalling_domain_more_within_its_bounds():
    svc = service("bandit")
    svc.record_baseline(Evaluation(dict.fromkeys(KINDS, 0.3), dict.fromkeys(KINDS, 1.0)))
    svc.next_phase()
    for step in range(1, 31):
        rewards = {
            "math": 0.2 + 0.01 * step + 0.02 * math.sin(step),  # improving
            "code": 0.5 + 0.02 * math.cos(step),  # flat
            "creative": 0.6 - 0.008 * step + 0.02 * math.sin(2 * step),  # forgetting
        }
        mix = svc.observe_step(step, stats(step, rewards))
    assert mix["creative"] > mix["code"] > mix["math"]
    assert all(LOW / 3 - 1e-9 <= w <= HIGH / 3 + 1e-9 for w in mix.values())


def test_noise_alone_leaves_the_bandit_near_uniform():
    import random

    rng = random.Random(0)
    svc = service("bandit")
    svc.record_baseline(Evaluation(dict.fromkeys(KINDS, 0.3), dict.fromkeys(KINDS, 1.0)))
    svc.next_phase()
    for step in range(1, 41):
        mix = svc.observe_step(step, stats(step, {d: 0.5 + rng.gauss(0, 0.09) for d in KINDS}))
    assert max(mix.values()) < 1.6 / 3 and min(mix.values()) > 0.6 / 3


def test_progress_z_and_bounded_softmax_by_hand():
    line = [[x, 0.1 * x + (0.01 if x % 2 else -0.01)] for x in range(10)]
    assert progress_z(line) == pytest.approx(2.0)  # clipped: the slope is certain
    assert progress_z(line[:3]) == 0.0  # too few points
    w = bounded_softmax({"a": 5.0, "b": 0.0, "c": 0.0, "d": 0.0})
    assert w["a"] == pytest.approx(HIGH / 4) and sum(w.values()) == pytest.approx(1.0)


def test_learnability_prefers_the_domain_with_signal_and_tac_adds_alignment():
    learn = service("learnability")
    learn.record_baseline(Evaluation(dict.fromkeys(KINDS, 0.3), dict.fromkeys(KINDS, 1.0)))
    learn.next_phase()
    for step in range(1, 21):
        mix = learn.observe_step(
            step,
            stats(step, dict.fromkeys(KINDS, 0.5), {"math": 1.0, "code": 0.2, "creative": 0.2}),
        )
    assert mix["math"] > 0.5

    tac = service("tac")
    tac.record_baseline(Evaluation(dict.fromkeys(KINDS, 0.3), dict.fromkeys(KINDS, 1.0)))
    tac.next_phase()
    for step in range(1, 21):
        s = stats(step, dict.fromkeys(KINDS, 0.5), dict.fromkeys(KINDS, 0.8))
        s["learner/grad_cos/code/math"] = 0.6  # code and math agree; creative conflicts
        s["learner/grad_cos/creative/math"] = -0.5
        s["learner/grad_cos/code/creative"] = -0.5
        mix = tac.observe_step(step, s)
    assert mix["math"] > 1 / 3 and mix["code"] > 1 / 3 > mix["creative"]


def test_planner_prediction_matches_the_world_it_was_given():
    truth = world()
    order, pred = plan_order(list(KINDS), truth)
    assert pred == pytest.approx(predict_final(order, truth))
