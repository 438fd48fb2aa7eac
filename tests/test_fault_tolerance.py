"""Fault tolerance for real: SIGKILL the whole run mid-phase and resume it (in-process workers:
the checkpoint and resume logic is the same with Ray); SIGKILL a rollout actor or a learner rank
mid-run (local Ray) and watch the controller replace it or resume. The small setting of
test_e2e, without the warm start (what is tested starts after it) and with tiny evaluations."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from test_e2e import ROOT, SMALL

pytestmark = pytest.mark.slow


def _start(tmp_path: Path, *extra: str) -> subprocess.Popen:
    args = [
        *SMALL,
        f"run.output_dir={tmp_path / 'runs'}",
        f"model.warm_start.cache_dir={tmp_path / 'cache'}",
        *extra,
    ]
    cmd = [sys.executable, "-m", "omnisched.cli", "run", str(ROOT / "recipes/tiny.yaml"), "-q"]
    args.append("schedule.probe_steps=0")  # phases of the lengths the tests count on
    return subprocess.Popen(
        [*cmd, *args],
        cwd=tmp_path,
        stdout=(tmp_path / "stdout.txt").open("w"),
        stderr=(tmp_path / "stderr.txt").open("w"),
        start_new_session=True,  # its own process group: the kill takes Ray's children too
    )


def _train_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r["step"] for r in rows if r["kind"] == "train"]


def _wait_for(cond, proc: subprocess.Popen | None = None, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out waiting"
        assert proc is None or proc.poll() is None, f"the run exited with {proc.returncode}"
        time.sleep(0.2)


def _run_dir(tmp_path: Path, proc: subprocess.Popen) -> Path:
    _wait_for(lambda: any((tmp_path / "runs").glob("tiny-*")), proc)
    return next((tmp_path / "runs").glob("tiny-*"))


NO_WARM_START = [
    "model.warm_start.enabled=false",
    "eval.samples=1",
    *(f"domains.{i}.eval_size=2" for i in range(4)),
]


def test_sigkill_mid_phase_then_resume_loses_and_repeats_no_step(tmp_path):
    proc = _start(
        tmp_path,
        *NO_WARM_START,
        "ray.enabled=false",
        "schedule.phases=2",
        "schedule.steps_per_phase=4",
        "run.checkpoint_every=2",
    )
    run_dir = _run_dir(tmp_path, proc)
    # past the step-2 checkpoint and into step 3, i.e. mid-phase after a checkpoint
    _wait_for(
        lambda: len(_train_steps(run_dir)) >= 3 and (run_dir / "checkpoints/latest").exists(), proc
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _train_steps(run_dir)
    latest = (run_dir / "checkpoints/latest").read_text()

    done = subprocess.run(
        [sys.executable, "-m", "omnisched.cli", "run", "--resume", str(run_dir), "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    after = _train_steps(run_dir)
    print(f"killed with steps {before} logged (checkpoint {latest}); after resume: {after}")
    assert after == list(range(1, 9))  # none lost, none duplicated
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows if r["kind"] == "eval"] == ["base", "phase-0", "phase-1"]
    state = json.loads((run_dir / "scheduler_state.json").read_text())
    assert len(state["phases"]) == 2 and all(p["result"] for p in state["phases"])
    assert (run_dir / "checkpoints/final/config.json").exists()


def _ray_actor(name: str) -> psutil.Process | None:
    for p in psutil.process_iter(["cmdline"]):
        if any(name in part for part in (p.info["cmdline"] or [])):
            return p
    return None


def test_a_killed_rollout_actor_is_replaced_and_the_step_retried(tmp_path):
    proc = _start(tmp_path, *NO_WARM_START, "schedule.phases=1", "schedule.steps_per_phase=6")
    run_dir = _run_dir(tmp_path, proc)
    _wait_for(lambda: len(_train_steps(run_dir)) >= 2, proc)
    actor = _ray_actor("ray::RolloutWorker")
    assert actor is not None
    actor.kill()
    assert proc.wait(timeout=600) == 0, (tmp_path / "stderr.txt").read_text()[-4000:]
    assert _train_steps(run_dir) == list(range(1, 7))
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("restarts/rollout", 0) for r in rows) >= 1


def test_a_killed_learner_rank_restarts_the_run_from_its_checkpoint(tmp_path):
    proc = _start(
        tmp_path,
        *NO_WARM_START,
        "schedule.phases=1",
        "schedule.steps_per_phase=4",
        "run.checkpoint_every=2",
    )
    run_dir = _run_dir(tmp_path, proc)
    _wait_for(
        lambda: len(_train_steps(run_dir)) >= 2 and (run_dir / "checkpoints/latest").exists(), proc
    )
    actor = _ray_actor("ray::LearnerWorker")
    assert actor is not None
    actor.kill()
    assert proc.wait(timeout=600) == 0, (tmp_path / "stderr.txt").read_text()[-4000:]
    assert _train_steps(run_dir) == [1, 2, 3, 4]  # the steps after the checkpoint ran once more
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("restarts/learner", 0) for r in rows) == 1
    assert "resuming from the last checkpoint" in (tmp_path / "stderr.txt").read_text()


# An engine killed during a weight broadcast: tests/test_weight_sync.py (a Ray run with two
# engines following the learner by broadcast, one SIGKILLed as a sync starts).
