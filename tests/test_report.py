"""report.md: transfer matrix D, heatmaps, entropy trends, BWT curve, the chosen order with its
reason, the prediction check and sample-wise forgetting (chance-adjusted where declared)."""

from omnisched.config.schema import ScheduleConfig
from omnisched.metrics import write_report
from omnisched.orchestration.services import SchedulerService
from omnisched.schedule import Evaluation, SchedulerState

KINDS = {"math": "structured", "mc": "structured", "story": "open"}


def _ev(acc, ent, items):
    return Evaluation(acc, ent, items)


def _bwt_run(tmp_path) -> SchedulerService:
    state = SchedulerState(list(KINDS), KINDS, "bwt", 3, choices={"mc": 4})
    svc = SchedulerService(
        state,
        ScheduleConfig(steps_per_phase=10, probe_steps=0),
        str(tmp_path / "scheduler_state.json"),
    )
    items = {
        "math": [1.0, 0.0, 0.0, 0.0],
        "mc": [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0],
        "story": [0.5, 0.0],
    }
    svc.record_baseline(
        _ev({"math": 0.2, "mc": 0.4, "story": 0.3}, {"math": 0.8, "mc": 0.9, "story": 2.0}, items)
    )
    results = [
        ({"math": 0.6, "mc": 0.45, "story": 0.3}, {"math": 0.6, "mc": 0.9, "story": 1.9}),
        ({"math": 0.5, "mc": 0.7, "story": 0.25}, {"math": 0.5, "mc": 0.7, "story": 1.8}),
        ({"math": 0.45, "mc": 0.3, "story": 0.6}, {"math": 0.5, "mc": 0.6, "story": 2.1}),
    ]
    final_items = {
        "math": [1.0, 1.0, 0.0, 0.0],
        "mc": [0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        "story": [0.5, 1.0],
    }
    for k, (acc, ent) in enumerate(results):
        svc.next_phase()
        svc.finish_phase(10, _ev(acc, ent, final_items if k == 2 else items))
    return svc


def test_report_has_transfer_prediction_forgetting_and_heatmaps(tmp_path):
    svc = _bwt_run(tmp_path)
    assert svc.state.training_order() == ["math", "mc", "story"]
    text = write_report(tmp_path, svc.state).read_text()
    # D[math][.] = phase 0 minus baseline
    assert "| math | +0.400 | +0.050 | +0.000 |" in text
    assert "Chosen order: math -> mc -> story" in text
    assert "bwt[entropy rule]" in text
    # BWT after phase 1: 0.5 - 0.6; after phase 2: ((0.45 - 0.6) + (0.3 - 0.7)) / 2
    assert "BWT after each phase: -0.1000, -0.2750" in text
    # entropy of story (2.0, 1.9, 1.8, 2.1): cov 0.1 / var 5 = 0.02 per phase, +5.0% from base
    assert "| story | open | +0.0200 | +5.0% |" in text
    assert "## Prediction check" in text and "| MAE |" in text
    # mc (4 options): forgotten 2 raw; chance-adjusted 2 - 1.5 = 0.5, gained 1 - 1.5 -> 0
    assert "| mc | 10 | 2 | 1 | 0.5 | 0.0 |" in text
    assert "| math | 4 | 0 | 1 | n/a | n/a |" in text
    assert "Per phase (forgotten/gained):" in text
    for png in ("phases.png", "heatmaps.png"):
        assert (tmp_path / png).stat().st_size > 1000
        assert f"]({png})" in text


def test_report_of_a_bandit_run_labels_mixture_phases(tmp_path):
    kinds = {"a": "structured", "b": "open"}
    state = SchedulerState(list(kinds), kinds, "bandit", 2)
    svc = SchedulerService(state, ScheduleConfig(policy="bandit"), str(tmp_path / "s.json"))
    svc.record_baseline(_ev({"a": 0.1, "b": 0.2}, {"a": 1.0, "b": 1.5}, {}))
    for k in range(2):
        svc.next_phase()
        for s in range(3):
            svc.observe_step(10 * k + s, {"reward/a": 0.5, "reward/b": 0.9})
        svc.finish_phase(3, _ev({"a": 0.2 + k / 10, "b": 0.2}, {"a": 0.9, "b": 1.5}, {}))
    text = write_report(tmp_path, svc.state).read_text()
    assert "| 0: mixture |" in text and "last sampling mixture: a " in text
    assert "BWT: n/a" in text and "Pairwise transfer" not in text
    assert (tmp_path / "heatmaps.png").stat().st_size > 1000
