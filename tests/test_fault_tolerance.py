"""Fault tolerance for real: SIGKILL the whole run mid-phase and resume it (in-process workers:
the checkpoint and resume logic is the same with Ray); SIGKILL a learner rank mid-run (local
Ray) and watch the run resume from its checkpoint (a killed rollout actor: tests/test_e2e.py).
The small setting of test_e2e, without the warm start (what is tested starts after it) and with
tiny evaluations."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ray_actor, run_dir_of, start_run, train_steps, wait_for
from test_e2e import ROOT, SMALL

pytestmark = pytest.mark.slow


NO_WARM_START = [
    "model.warm_start.enabled=false",
    "eval.samples=1",
    *(f"domains.{i}.eval_size=2" for i in range(4)),
]


def _run_past_checkpoint(tmp_path: Path, steps: int, *extra: str):
    """Start tiny.yaml (phases of the lengths the tests count on, a checkpoint every 2 steps)
    and wait until `steps` train steps are logged and a checkpoint exists: (process, run dir)."""
    proc = start_run(
        tmp_path,
        ROOT / "recipes/tiny.yaml",
        *SMALL,
        *NO_WARM_START,
        f"run.output_dir={tmp_path / 'runs'}",
        f"model.warm_start.cache_dir={tmp_path / 'cache'}",
        "schedule.probe_steps=0",
        "schedule.steps_per_phase=4",
        "run.checkpoint_every=2",
        *extra,
    )
    run_dir = run_dir_of(tmp_path, proc)
    ckpt = run_dir / "checkpoints/latest"
    wait_for(lambda: len(train_steps(run_dir)) >= steps and ckpt.exists(), proc)
    return proc, run_dir


def test_sigkill_mid_phase_then_resume_loses_and_repeats_no_step(tmp_path):
    # past the step-2 checkpoint and into step 3, i.e. mid-phase after a checkpoint
    proc, run_dir = _run_past_checkpoint(tmp_path, 3, "ray.enabled=false", "schedule.phases=2")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = train_steps(run_dir)
    latest = (run_dir / "checkpoints/latest").read_text()

    done = subprocess.run(
        [sys.executable, "-m", "omnisched.cli", "run", "--resume", str(run_dir), "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    after = train_steps(run_dir)
    print(f"killed with steps {before} logged (checkpoint {latest}); after resume: {after}")
    assert after == list(range(1, 9))  # none lost, none duplicated
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows if r["kind"] == "eval"] == ["base", "phase-0", "phase-1"]
    state = json.loads((run_dir / "scheduler_state.json").read_text())
    assert len(state["phases"]) == 2 and all(p["result"] for p in state["phases"])
    assert (run_dir / "checkpoints/final/config.json").exists()


# A killed rollout actor (replaced, the step retried): tests/test_e2e.py, inside the Ray run.


def test_a_killed_learner_rank_restarts_the_run_from_its_checkpoint(tmp_path):
    proc, run_dir = _run_past_checkpoint(tmp_path, 2, "schedule.phases=1")
    actor = ray_actor("ray::LearnerWorker")
    assert actor is not None
    actor.kill()
    assert proc.wait(timeout=600) == 0, (tmp_path / "stderr.txt").read_text()[-4000:]
    assert train_steps(run_dir) == [1, 2, 3, 4]  # the steps after the checkpoint ran once more
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("restarts/learner", 0) for r in rows) == 1
    assert "resuming from the last checkpoint" in (tmp_path / "stderr.txt").read_text()


# An engine killed during a weight broadcast: tests/test_weight_sync.py (a Ray run with two
# engines following the learner by broadcast, one SIGKILLed as a sync starts).
