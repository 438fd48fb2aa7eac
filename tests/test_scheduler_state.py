"""Scheduler state: persistence round trip, R/BWT/FWT from records, resume keeps the decision."""

from omnisched.config.schema import ScheduleConfig
from omnisched.metrics import write_report
from omnisched.orchestration.services import SchedulerService
from omnisched.schedule import Evaluation, SchedulerState


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
