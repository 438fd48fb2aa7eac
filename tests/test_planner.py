"""The planner's model by hand: saturating gains, transfer, fragility of fresh skill, entropy;
plans chosen over the phases that are left; uncertainty of the gap between two plans."""

import itertools
import math

import pytest

from omnisched.schedule.planner import (
    Estimate,
    TransferModel,
    advance,
    as_plan,
    plan_blocks,
    plan_difference,
    plan_mean,
    plan_order,
    predict_final,
    predict_spread,
)

E0 = Estimate(0.0)


def model(**kw) -> TransferModel:
    names = kw.pop("names", ["a", "b"])
    base = dict(
        current=dict.fromkeys(names, 0.2),
        headroom={d: Estimate(0.4) for d in names},
        transfer={c: {b: E0 for b in names if b != c} for c in names},
        fragility={b: {"structured": E0, "open": E0} for b in names},
        kinds=dict.fromkeys(names, "structured"),
    )
    return TransferModel(**{**base, **kw})


def test_gain_closes_the_rate_fraction_of_the_headroom_and_saturates():
    m = model()
    # one phase: half of the 0.4 headroom; two phases: 3/4 of it; half a phase: 1 - 0.5^0.5
    assert predict_final(["a"], m)["a"] == pytest.approx(0.4)
    assert predict_final(["a", "a"], m)["a"] == pytest.approx(0.5)
    assert predict_final([("a", 0.5)], m)["a"] == pytest.approx(0.2 + (1 - 0.5**0.5) * 0.4)


def test_transfer_before_training_is_partly_erased_and_after_it_counts_whole():
    t = {"a": {"b": Estimate(0.1)}, "b": {"a": E0}}
    m = model(transfer=t)
    # a then b: b goes 0.2 -> 0.3, then gains half of its remaining 0.3 headroom -> 0.45
    assert predict_final(["a", "b"], m)["b"] == pytest.approx(0.45)
    # b then a: b reaches 0.4, then a's phase adds the whole 0.1 -> 0.5
    assert predict_final(["b", "a"], m)["b"] == pytest.approx(0.5)
    best, _ = plan_order(["a", "b"], m)
    assert best == ["b", "a"]  # help the domain after it trained


def test_fresh_skill_is_lost_at_the_fragility_rate_per_later_phase():
    frag = {
        "a": {"structured": Estimate(math.log(2)), "open": E0},
        "b": {"structured": E0, "open": E0},
    }
    m = model(fragility=frag)
    # a gains 0.2 (fresh), then b's phase takes 1 - exp(-ln 2) = half of it
    assert predict_final(["a", "b"], m)["a"] == pytest.approx(0.3)
    assert predict_final(["b", "a"], m)["a"] == pytest.approx(0.4)
    order, pred = plan_order(["a", "b"], m)
    assert order == ["b", "a"] and pred == pytest.approx({"a": 0.4, "b": 0.4})


def test_structured_training_collapses_entropy_and_slows_open_learning():
    kinds = {"s": "structured", "o": "open"}
    m = model(
        names=["s", "o"],
        kinds=kinds,
        entropy_step={"structured": Estimate(math.log(0.25)), "open": E0},
        entropy_sensitivity=Estimate(0.5),
    )
    # after s, entropy is 1/4: o learns as if its phase were 0.25^0.5 = 0.5 long
    assert predict_final(["s", "o"], m)["o"] == pytest.approx(0.2 + (1 - 0.5**0.5) * 0.4)
    assert predict_final(["o", "s"], m)["o"] == pytest.approx(0.4)
    assert advance(m, as_plan(["s"])).entropy == pytest.approx(0.25)


def test_horizon_plans_only_the_phases_left_against_brute_force():
    names = ["a", "b", "c"]
    m = model(
        names=names,
        current={"a": 0.1, "b": 0.5, "c": 0.3},
        headroom={"a": Estimate(0.6), "b": Estimate(0.1), "c": Estimate(0.4)},
        transfer={
            "a": {"b": Estimate(-0.1), "c": Estimate(0.05)},
            "b": {"a": Estimate(0.15), "c": E0},
            "c": {"a": Estimate(-0.05), "b": Estimate(0.1)},
        },
    )
    for horizon in (1, 2, 3):
        order, pred = plan_order(names, m, horizon=horizon)
        assert len(order) == horizon
        brute = max(itertools.permutations(names, horizon), key=lambda o: plan_mean(as_plan(o), m))
        assert order == list(brute)
        assert sum(pred.values()) / 3 == pytest.approx(plan_mean(as_plan(brute), m))


def test_blocks_keep_their_order_and_truncate_to_the_horizon():
    kinds = {"s1": "structured", "s2": "structured", "o": "open"}
    m = model(names=list(kinds), kinds=kinds)
    order, _ = plan_blocks([["s1", "s2"], ["o"]], m, horizon=2)
    assert sorted(order) == ["s1", "s2"]
    order, _ = plan_blocks([["s1", "s2"], ["o"]], m)
    assert order[-1] == "o"


def test_gap_between_plans_has_the_variance_of_the_parameters_it_depends_on():
    # a's training moves b by t ~ N(0.1, 0.03^2). Order b,a gets all of t on b; a,b keeps half
    # of it (b's own phase then closes half of the gap): the gap is t/2 on b, t/4 on the mean.
    t = {"a": {"b": Estimate(0.1, 0.03**2)}, "b": {"a": E0}}
    m = model(transfer=t)
    gap = plan_difference(as_plan(["b", "a"]), as_plan(["a", "b"]), m)
    assert gap.mean == pytest.approx(0.1 / 4)
    assert gap.sd == pytest.approx(0.03 / 4)
    spread = predict_spread(as_plan(["b", "a"]), m)
    assert spread["b"].mean == pytest.approx(0.5) and spread["b"].sd == pytest.approx(0.03)
    assert spread["a"].sd == pytest.approx(0.0)


def test_beam_search_matches_exhaustive_search_beyond_its_limit(monkeypatch):
    import omnisched.schedule.planner as planner

    names = [f"d{i}" for i in range(7)]  # 5040 orders: beyond MAX_EXHAUSTIVE
    t = {c: {b: Estimate(0.02 * ((i * 3 + j * 5) % 7 - 3)) for j, b in enumerate(names) if b != c}
         for i, c in enumerate(names)}  # fmt: skip
    frag = {b: {"structured": Estimate(0.1 * (i % 4)), "open": E0} for i, b in enumerate(names)}
    m = model(names=names, transfer=t, fragility=frag)
    beam, _ = plan_order(names, m)
    monkeypatch.setattr(planner, "MAX_EXHAUSTIVE", 10_000)
    exhaustive, _ = plan_order(names, m)
    assert plan_mean(as_plan(beam), m) == pytest.approx(plan_mean(as_plan(exhaustive), m), abs=1e-3)
