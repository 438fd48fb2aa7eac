"""Fitting the planner's model to measurements: paired standard errors, ceilings anchored before
a probe (its gain counted once), transfer and fragility recovered from clean data, noisy
measurements shrunk toward the prior."""

import math

import pytest

from omnisched.schedule.estimate import PRIOR_FRAGILITY, changes, fit, paired_variance
from omnisched.schedule.planner import Estimate, TransferModel, advance, as_plan, predict_final
from omnisched.schedule.state import Evaluation, PhaseRecord, SchedulerState

FULL = 20
M = 2000  # items per evaluation: paired standard errors of ~0.001


def items(acc: float, spread: float = 0.05) -> list[float]:
    """M item scores with mean `acc`, alternating +- spread (a paired difference of two such
    lists, shifted alike, has zero variance)."""
    return [acc + (spread if i % 2 else -spread) for i in range(M)]


def evaluation(acc: dict[str, float], entropy: dict[str, float] | None = None) -> Evaluation:
    ent = entropy or dict.fromkeys(acc, 1.0)
    return Evaluation(dict(acc), ent, {d: items(v) for d, v in acc.items()})


def run(truth: TransferModel, plan: list[tuple[str, int]], probe: int = 0) -> SchedulerState:
    """A scheduler state whose phases follow `truth` exactly (the planner's own dynamics)."""
    names = list(truth.current)
    state = SchedulerState(names, dict(truth.kinds), "bwt", len(names))
    state.baseline = evaluation(truth.current)
    model = truth
    for i, (d, steps) in enumerate(plan):
        model = advance(model, ((d, steps / FULL),))
        state.phases.append(
            PhaseRecord(
                i, [d], "test", steps=steps, probe=i < probe, result=evaluation(model.current)
            )
        )
    return state


def truth(**kw) -> TransferModel:
    names = ["a", "b", "c"]
    zero = Estimate(0.0)
    base = dict(
        current={"a": 0.2, "b": 0.3, "c": 0.4},
        headroom={"a": Estimate(0.4), "b": Estimate(0.3), "c": Estimate(0.2)},
        transfer={c: {b: zero for b in names if b != c} for c in names},
        fragility={b: {"structured": zero, "open": zero} for b in names},
        kinds=dict.fromkeys(names, "structured"),
    )
    return TransferModel(**{**base, **kw})


def test_paired_variance_by_hand():
    before, after = [0.0, 1.0, 0.5, 0.5], [0.5, 1.0, 0.5, 1.0]
    # differences 0.5, 0, 0, 0.5: mean 0.25, unbiased var 1/12, over 4 items
    assert paired_variance(before, after) == pytest.approx(1 / 12 / 4)
    assert paired_variance(None, after) > 0  # no items: a fallback, not zero


def test_a_probe_anchors_the_ceiling_before_its_own_gain():
    """The issue's bug: the probed domain's level was now + its probe gain, counting the gain
    twice. The ceiling is the accuracy before the probe + gain / the closed fraction."""
    t = truth()
    state = run(t, [("a", 5), ("b", 5), ("c", 5)], probe=3)
    fitted = fit(state, FULL)
    now = fitted.current
    for d in "abc":
        ceiling = now[d] + fitted.headroom[d].mean
        assert ceiling == pytest.approx(t.current[d] + t.headroom[d].mean, abs=2e-3), d


def test_clean_measurements_recover_transfer_and_fragility():
    t = truth(
        transfer={
            "a": {"b": Estimate(0.03), "c": Estimate(-0.04)},
            "b": {"a": Estimate(-0.02), "c": Estimate(0.01)},
            "c": {"a": Estimate(0.0), "b": Estimate(0.02)},
        },
        fragility={
            "a": {"structured": Estimate(0.5), "open": Estimate(0.0)},
            "b": {"structured": Estimate(0.0), "open": Estimate(0.0)},
            "c": {"structured": Estimate(0.0), "open": Estimate(0.0)},
        },
    )
    state = run(t, [("a", FULL), ("b", FULL), ("c", FULL)])
    fitted = fit(state, FULL)
    # untrained victims: exact transfer per phase
    assert fitted.transfer["a"]["b"].mean == pytest.approx(0.03, abs=2e-3)
    assert fitted.transfer["a"]["c"].mean == pytest.approx(-0.04, abs=2e-3)
    assert fitted.transfer["b"]["c"].mean == pytest.approx(0.01, abs=2e-3)
    # a's fresh 0.2 lost 1 - e^-0.5 = 39% of it under b. That loss is confounded with b's
    # transfer onto a, never measured on an untrained a (its prior sd 0.04), so the estimate
    # moves from the prior 0.3 toward 0.5 and tightens, without pinning it; b's, under c with
    # nothing lost, falls below the prior
    a = fitted.fragility["a"]["structured"]
    assert 0.4 < a.mean < 0.55 and a.var < PRIOR_FRAGILITY.var
    assert fitted.fragility["b"]["structured"].mean < PRIOR_FRAGILITY.mean
    # another phase of a: its gain is predicted from the ceiling measured in its first phase
    again = predict_final(["a"], fitted)["a"] - fitted.current["a"]
    end = advance(t, as_plan(["a", "b", "c"]))
    assert again == pytest.approx(predict_final(["a"], end)["a"] - end.current["a"], abs=3e-3)


def test_noisy_short_probes_are_shrunk_toward_the_prior():
    """A probe's per-phase transfer is its change / x: at 128 noisy items a 3-step probe's
    +0.03 says next to nothing about a 0.2 change per phase, which the fit must not believe."""
    names = ["a", "b"]
    state = SchedulerState(names, dict.fromkeys(names, "structured"), "bwt", 2)
    before = [0.0, 1.0] * 64  # 128 items
    after = list(before)
    for i in range(0, 24, 2):  # 12 zeros become ones ...
        after[i] = 1.0
    for i in range(1, 17, 2):  # ... and 8 ones zeros: +4 / 128
        after[i] = 0.0
    state.baseline = Evaluation({"a": 0.5, "b": 0.5}, {}, {"a": before, "b": before})
    result = Evaluation({"a": 0.5, "b": sum(after) / 128}, {}, {"a": before, "b": after})
    state.phases.append(PhaseRecord(0, ["a"], "probe", steps=3, probe=True, result=result))
    (change,) = [c for c in changes(state, FULL) if c.victim == "b"]
    assert change.value == pytest.approx(4 / 128)
    assert change.var == pytest.approx(paired_variance(before, after)) and change.var > 1e-3
    est = fit(state, FULL).transfer["a"]["b"]
    raw = change.value / (3 / FULL)  # 0.21 per phase if taken at face value
    assert 0 < est.mean < raw / 10


def test_entropy_steps_per_trainer_kind_from_measured_entropies():
    names = ["s", "o"]
    state = SchedulerState(names, {"s": "structured", "o": "open"}, "bwt", 2)
    state.baseline = evaluation({"s": 0.3, "o": 0.3}, {"s": 1.0, "o": 2.0})
    after = evaluation({"s": 0.5, "o": 0.3}, {"s": 0.5, "o": 1.0})  # halved by the s phase
    state.phases.append(PhaseRecord(0, ["s"], "x", steps=FULL, result=after))
    fitted = fit(state, FULL)
    assert fitted.entropy == pytest.approx(0.5)
    assert fitted.entropy_step["structured"].mean == pytest.approx(math.log(0.5), abs=0.02)
    assert fitted.entropy_step["open"].mean == pytest.approx(0.0)  # never measured: the prior
