"""The additive-transfer planner and the policies that use it."""

import itertools

import pytest

from omnisched.config.schema import ScheduleConfig
from omnisched.schedule import (
    POLICIES,
    Evaluation,
    PhaseRecord,
    SchedulerState,
    TransferModel,
    plan_order,
    predict_final,
)


def test_predict_final_applies_levels_and_later_transfer():
    model = TransferModel(
        current={"a": 0.1, "b": 0.2},
        level={"a": 0.8, "b": 0.6},
        transfer={"a": {"b": -0.1}, "b": {"a": -0.3}},
    )
    # a then b: a reaches 0.8 then loses 0.3 -> 0.5; b ends at its level 0.6.
    assert predict_final(["a", "b"], model) == pytest.approx({"a": 0.5, "b": 0.6})
    # b then a: b reaches 0.6 then loses 0.1 -> 0.5; a ends at 0.8.
    assert predict_final(["b", "a"], model) == pytest.approx({"a": 0.8, "b": 0.5})


def test_planner_puts_the_domain_others_hurt_last():
    model = TransferModel(
        current={"a": 0.1, "b": 0.2, "c": 0.3},
        level={"a": 0.8, "b": 0.6, "c": 0.7},
        transfer={
            "a": {"b": -0.05, "c": 0.0},
            "b": {"a": -0.05, "c": -0.4},
            "c": {"a": -0.05, "b": -0.05},
        },
    )
    order, predicted = plan_order(["a", "b", "c"], model)
    assert order == ["b", "c", "a"]  # c is hurt badly by b, so after b; a hurts nobody: last
    best_mean = sum(predicted.values()) / 3
    assert best_mean == pytest.approx((0.5 + 0.7 + 0.8) / 3)
    for other in itertools.permutations("abc"):
        if list(other) != order:
            assert sum(predict_final(other, model).values()) / 3 < best_mean


def test_planner_can_put_open_domain_first_when_measurements_say_so():
    # "structured first" is wrong here: training the structured domain helps the open one,
    # while training the open one destroys the structured one.
    model = TransferModel(
        current={"math": 0.2, "creative": 0.2},
        level={"math": 0.7, "creative": 0.6},
        transfer={"math": {"creative": 0.1}, "creative": {"math": -0.5}},
    )
    order, _ = plan_order(["math", "creative"], model, {"math": 0.0, "creative": 1.0})
    assert order == ["creative", "math"]


def test_tie_break_orders_structured_first():
    model = TransferModel(current={"x": 0.2, "y": 0.2}, level={"x": 0.5, "y": 0.5}, transfer={})
    order, _ = plan_order(["y", "x"], model, {"y": 1.0, "x": 0.0})
    assert order == ["x", "y"]


def test_beam_search_matches_exhaustive_on_separable_case(monkeypatch):
    import omnisched.schedule.planner as planner

    names = [f"d{i}" for i in range(6)]
    vuln = {n: -0.02 * i for i, n in enumerate(names)}  # later names are hurt more
    model = TransferModel(
        current={n: 0.1 for n in names},
        level={n: 0.6 for n in names},
        transfer={c: {a: vuln[a] for a in names if a != c} for c in names},
    )
    exhaustive, _ = plan_order(names, model)
    monkeypatch.setattr(planner, "MAX_EXHAUSTIVE", 2)
    beam, _ = plan_order(names, model)
    assert beam == exhaustive == names  # the most vulnerable (last) names trained last


def _state(policy: str) -> SchedulerState:
    return SchedulerState(
        domains=["math", "code", "creative"],
        kinds={"math": "structured", "code": "structured", "creative": "open"},
        policy=policy,
        total_phases=3,
        baseline=Evaluation({"math": 0.2, "code": 0.2, "creative": 0.5}, {}),
    )


def test_joint_and_sequential_policies():
    state = _state("joint")
    assert POLICIES.get("joint")(ScheduleConfig()).next_phase(state).domains == [
        "math",
        "code",
        "creative",
    ]
    seq = POLICIES.get("sequential")(ScheduleConfig(order=["code", "math", "creative"]))
    state.phases.append(PhaseRecord(0, ["code"], "x"))
    assert seq.next_phase(state).domains == ["math"]


def test_bwt_policy_uses_measured_vulnerability():
    state = _state("bwt")
    policy = POLICIES.get("bwt")(ScheduleConfig())
    first = policy.next_phase(state)
    assert first.domains == ["math"]  # no measurement: structured first, recipe order
    # Training math hurt code a lot and creative not at all: code is vulnerable, so train it
    # last; creative goes before it despite being open-ended.
    state.phases.append(
        PhaseRecord(
            0,
            ["math"],
            first.reason,
            steps=5,
            result=Evaluation({"math": 0.6, "code": 0.0, "creative": 0.5}, {}),
        )
    )
    second = policy.next_phase(state)
    assert second.domains == ["creative"]
    assert second.predicted_final is not None and "order" in second.reason
