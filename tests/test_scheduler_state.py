"""Scheduler state: persistence round trip, R/BWT/FWT from records, resume keeps the decision."""

import json

import pytest

from omnisched.config.schema import ScheduleConfig
from omnisched.metrics import write_report
from omnisched.orchestration.services import SchedulerService
from omnisched.schedule import Evaluation, SchedulerState
from omnisched.schedule.state import PhaseRecord


def _ev(m, c, q):
    return Evaluation(
        {"math": m, "code": c, "qa": q},
        {"math": 0.5, "code": 0.4, "qa": 0.3},
        {"math": [1.0, 0.0, 1.0], "code": [0.0, 0.0, 1.0], "qa": [1.0, 1.0, 0.0]},
    )


def _fresh(tmp_path, policy="sequential"):
    state = SchedulerState(
        ["math", "code", "qa"],
        {"math": "structured", "code": "structured", "qa": "structured"},
        policy,
        3,
    )
    return SchedulerService(
        state, ScheduleConfig(order=["code", "math", "qa"]), str(tmp_path / "scheduler_state.json")
    )


def test_service_records_phases_and_computes_transfer(tmp_path):
    svc = _fresh(tmp_path)
    svc.record_baseline(_ev(0.1, 0.2, 0.3))
    results = [_ev(0.1, 0.6, 0.3), _ev(0.7, 0.5, 0.3), _ev(0.6, 0.4, 0.8)]
    for res in results:
        svc.next_phase()
        svc.finish_phase(4, res)
    state = SchedulerState.load(tmp_path / "scheduler_state.json")
    assert state.training_order() == ["code", "math", "qa"]
    # columns in training order: code, math, qa
    assert state.R_trained_order() == [[0.6, 0.1, 0.3], [0.5, 0.7, 0.3], [0.4, 0.6, 0.8]]
    # BWT = ((0.4 - 0.6) + (0.6 - 0.7)) / 2
    assert abs(state.bwt() - (-0.15)) < 1e-9
    # FWT = ((R[0][1] - base_math) + (R[1][2] - base_qa)) / 2 = ((0.1-0.1) + (0.3-0.3)) / 2
    assert abs(state.fwt()) < 1e-9
    assert state.to_dict()["R"][2] == [0.6, 0.4, 0.8]


def test_resume_mid_phase_returns_the_same_decision(tmp_path):
    svc = _fresh(tmp_path)
    svc.record_baseline(_ev(0.1, 0.2, 0.3))
    first = svc.next_phase()
    # the process dies here; a new service is built from the saved file
    restored = SchedulerState.load(tmp_path / "scheduler_state.json")
    svc2 = SchedulerService(
        restored,
        ScheduleConfig(order=["code", "math", "qa"]),
        str(tmp_path / "scheduler_state.json"),
    )
    again = svc2.next_phase()
    assert again.domains == first.domains == ["code"]
    assert len(svc2.state.phases) == 1


def test_report_has_matrix_transfer_entropy_and_plot(tmp_path):
    svc = _fresh(tmp_path)
    svc.record_baseline(_ev(0.1, 0.2, 0.3))
    for res in [_ev(0.1, 0.6, 0.3), _ev(0.7, 0.5, 0.3)]:
        svc.next_phase()
        svc.finish_phase(4, res)
    report = write_report(tmp_path, svc.state).read_text()
    assert "| 1: math | 0.700 | 0.500 | 0.300 | 0.500 |" in report
    assert "BWT: -0.1000" in report
    assert "phase 1 on math: 0.100 -> 0.700 (+0.600)" in report
    assert "## Entropy" in report
    assert (tmp_path / "phases.png").stat().st_size > 1000


def test_cli_report_regenerates_and_rejects_non_run_dirs(tmp_path):
    import subprocess
    import sys

    svc = _fresh(tmp_path)
    svc.record_baseline(_ev(0.1, 0.2, 0.3))
    svc.next_phase()
    svc.finish_phase(4, _ev(0.1, 0.6, 0.3))
    cmd = [sys.executable, "-m", "omnisched.cli", "report"]
    ok = subprocess.run([*cmd, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "| 0: code | 0.100 | 0.600 | 0.300 |" in (tmp_path / "report.md").read_text()
    bad = subprocess.run(
        [*cmd, str(tmp_path / "nope")], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "no scheduler_state.json" in bad.stderr
    assert "Traceback" not in bad.stderr


# ---- resume after phase k gives exactly the uninterrupted decision ----------------------------
def _world_eval(k: int) -> Evaluation:
    """A deterministic, phase-dependent evaluation (values differ per phase and domain)."""
    acc = {"math": 0.2 + 0.07 * k, "code": 0.5 - 0.05 * k, "qa": 0.3 + 0.03 * (k % 2)}
    return Evaluation(acc, {"math": 0.5 - 0.02 * k, "code": 0.4, "qa": 1.1 + 0.01 * k})


def _service(path, policy, probe_steps=0, state=None):
    kinds = {"math": "structured", "code": "structured", "qa": "open"}
    state = state or SchedulerState(list(kinds), kinds, policy, 5)
    cfg = ScheduleConfig(policy=policy, steps_per_phase=10, probe_steps=probe_steps)
    return SchedulerService(state, cfg, str(path))


def _step_stats(step: int) -> dict:
    return {"reward/math": min(1.0, 0.1 + 0.04 * step), "reward/code": 0.9, "reward/qa": 0.5}


def _advance(svc, k: int) -> None:
    """Run phases 0..k of an uninterrupted run, driving online policies step by step."""
    dec = svc.next_phase()
    steps = dec.steps or 10
    for s in range(steps):
        if dec.mixture is not None:
            svc.observe_step(k * 100 + s, _step_stats(k * 10 + s))
    svc.finish_phase(steps, _world_eval(k + 1))


@pytest.mark.parametrize(
    ("policy", "probe_steps"), [("bwt", 0), ("bwt", 3), ("bandit", 0), ("tac", 0)]
)
@pytest.mark.parametrize("k", [0, 2, 4])
def test_resume_after_phase_k_gives_the_uninterrupted_decision(tmp_path, policy, probe_steps, k):
    a = _service(tmp_path / "a.json", policy, probe_steps)
    a.record_baseline(_world_eval(0))
    for j in range(k + 1):
        _advance(a, j)
    snapshot = SchedulerState.load(tmp_path / "a.json")  # the process dies after phase k
    b = _service(tmp_path / "b.json", policy, probe_steps, state=snapshot)
    expected, got = a.next_phase(), b.next_phase()
    assert got == expected
    assert a.get_state() == b.get_state()
    if policy in ("bandit", "tac"):
        assert got.mixture is not None and policy in b.state.policy_state
        assert a.observe_step(10_000, _step_stats(3)) == b.observe_step(10_000, _step_stats(3))


def test_bandit_resume_mid_phase_continues_the_mixture_and_ignores_replays(tmp_path):
    a = _service(tmp_path / "a.json", "bandit")
    a.record_baseline(_world_eval(0))
    a.next_phase()
    for s in range(6):
        a.observe_step(s, _step_stats(s))
    b = _service(tmp_path / "b.json", "bandit", state=SchedulerState.load(tmp_path / "a.json"))
    resumed = b.next_phase()  # the open phase's decision, with its latest mixture
    assert resumed.mixture == a.state.phases[-1].mixture
    assert len(b.state.phases) == 1
    before = b.get_state()
    assert b.observe_step(5, _step_stats(5)) == resumed.mixture  # replayed step: no change
    assert b.get_state() == before
    assert a.observe_step(6, _step_stats(6)) == b.observe_step(6, _step_stats(6))


def test_state_file_persists_transfer_entropy_and_the_policy_state(tmp_path):
    svc = _service(tmp_path / "s.json", "bandit")
    svc.record_baseline(_world_eval(0))
    _advance(svc, 0)
    raw = json.loads((tmp_path / "s.json").read_text())
    memory = raw["policy_state"]["bandit"]
    assert memory["last_step"] == 9 and set(memory["weights"]) == {"math", "code", "qa"}
    assert raw["phases"][0]["exposure"]["math"] > 0
    assert set(raw["entropy_trend"]) == {"math", "code", "qa"}
    assert raw["D"] == {}  # only mixed phases so far: no single-domain row
    old = {k: v for k, v in raw.items() if k not in {"policy_state", "choices"}}  # older files
    for p in old["phases"]:
        for key in ("probe", "planned_order", "mixture", "exposure", "predicted_sd"):
            p.pop(key)
    assert SchedulerState.from_dict(old).policy_state == {}
    old["bandit"] = memory  # written before policy_state existed: still resumed
    assert SchedulerState.from_dict(old).policy_state == {"bandit": memory}


def test_probe_phases_are_not_part_of_the_training_order_nor_of_bwt():
    """A bwt run with probes: the order, R in training order, BWT and FWT over regular phases."""

    def ev(a: float, b: float) -> Evaluation:
        return Evaluation({"a": a, "b": b}, {"a": 1.0, "b": 1.0})

    state = SchedulerState(["a", "b"], {"a": "structured", "b": "open"}, "bwt", 2)
    state.baseline = ev(0.1, 0.2)
    rows = [("a", True, ev(0.15, 0.2)), ("b", True, ev(0.15, 0.25))]  # probes
    rows += [("b", False, ev(0.1, 0.5)), ("a", False, ev(0.6, 0.4))]
    for k, (d, probe, result) in enumerate(rows):
        state.phases.append(PhaseRecord(k, [d], "r", steps=5, result=result, probe=probe))
    assert state.training_order() == ["b", "a"]
    assert state.R_trained_order() == [[0.5, 0.1], [0.4, 0.6]]
    assert state.bwt() == pytest.approx(0.4 - 0.5)
    assert state.fwt() == pytest.approx(0.1 - 0.15)  # a after b's phase vs a after the probes
