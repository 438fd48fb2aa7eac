"""Checkpoints and the resume point, without a run: the scheduler's state travels with the
checkpoint, so a run killed after the scheduler recorded a phase's evaluation but before the
checkpoint that follows it resumes consistently (that phase runs again, its metrics once)."""

import json
from pathlib import Path

from omnisched.orchestration.checkpoint import resume_point, write_checkpoint
from omnisched.schedule.state import Evaluation, PhaseRecord, SchedulerState


def _state(completed: int) -> SchedulerState:
    ev = Evaluation({"a": 0.5}, {"a": 1.0}, {"a": [0.5, 0.5]})
    state = SchedulerState(["a"], {"a": "structured"}, "sequential", 2, baseline=ev)
    for k in range(completed):
        state.phases.append(PhaseRecord(k, ["a"], "r", steps=4, result=ev))
    return state


def _labels(path: Path) -> list[str]:
    state = SchedulerState.load(path)
    return ["base"] + [f"phase-{k}" for k in range(len(state.completed()))]


def test_resume_restores_the_schedulers_state_of_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    ctl = {"step": 2, "phase": 0, "step_in_phase": 2, "rng": [3, [1], None]}
    write_checkpoint(
        run / "checkpoints",
        2,
        {**ctl, "scheduler": _state(0).to_dict()},
        lambda d: Path(d, "weights").write_text("w"),
    )
    # the run went on: steps 3-4, phase 0 evaluated and recorded, then killed before the
    # phase-end checkpoint
    _state(1).save(run / "scheduler_state.json")
    rows = [
        {"kind": "eval", "step": 0, "label": "base"},
        *({"kind": "train", "step": s} for s in (1, 2, 3, 4)),
        {"kind": "eval", "step": 4, "label": "phase-0"},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    start = resume_point(run, lambda: _labels(run / "scheduler_state.json"))
    assert start is not None and (start.step, start.phase, start.step_in_phase) == (2, 0, 2)
    assert SchedulerState.load(run / "scheduler_state.json").completed() == []  # phase 0 reruns
    kept = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert kept == rows[:3]  # base, steps 1-2: steps 3-4 and phase-0's evaluation come again


def test_a_checkpoint_without_a_scheduler_snapshot_keeps_the_saved_state(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    ctl = {"step": 4, "phase": 1, "step_in_phase": 0, "rng": [3, [1], None]}
    write_checkpoint(run / "checkpoints", 4, ctl, lambda d: None)  # written before snapshots
    _state(1).save(run / "scheduler_state.json")
    resume_point(run, lambda: _labels(run / "scheduler_state.json"))
    assert len(SchedulerState.load(run / "scheduler_state.json").completed()) == 1
