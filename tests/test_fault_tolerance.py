"""Fault tolerance for real: SIGKILL the whole run mid-phase and resume it; SIGKILL a rollout
actor mid-run and watch the controller replace it. Local Ray, the small setting of test_e2e."""

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


def test_sigkill_mid_phase_then_resume_loses_and_repeats_no_step(tmp_path):
    proc = _start(
        tmp_path, "schedule.phases=2", "schedule.steps_per_phase=4", "run.checkpoint_every=2"
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
    proc = _start(tmp_path, "schedule.phases=1", "schedule.steps_per_phase=6")
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
        "model.warm_start.enabled=false",  # what is tested starts after it
        "eval.samples=1",
        *(f"domains.{i}.eval_size=2" for i in range(4)),
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


def test_an_engine_killed_during_a_broadcast_is_seen_in_seconds(tmp_path, caplog):
    """Two HF engines and a learner in one broadcast group; engine 0's process is SIGKILLed as a
    sync starts. The driver sees the death at once, aborts the group (engine 1 would otherwise
    wait for the rest of the broadcast until the group's 600 s timeout), replaces engine 0 and
    syncs both through the object store."""
    import ray
    import torch
    from test_weight_sync import TINY, _recipe

    from omnisched.config.schema import RayConfig
    from omnisched.model import build_char_tokenizer, build_tiny_model
    from omnisched.model.build import save_model
    from omnisched.orchestration.backend import RayBackend
    from omnisched.orchestration.learner_group import LearnerGroup
    from omnisched.orchestration.rollout_pool import RolloutPool

    recipe = _recipe(tmp_path, rollout={"num_workers": 2})
    tok = build_char_tokenizer()
    start, policy = (
        str(save_model(build_tiny_model(TINY, tok, seed=seed), tok, tmp_path / f"m{seed}"))
        for seed in (0, 1)
    )
    ray.init(num_cpus=4, include_dashboard=False)
    backend = RayBackend(RayConfig())
    try:
        learner = LearnerGroup(backend, recipe, policy)  # engines start from other weights
        pool = RolloutPool(backend, recipe, start, [None, None])
        pool.follow(learner)
        pool.sync_weights()  # one whole broadcast first
        pid = ray.get(pool.workers[0].__ray_call__.remote(lambda actor: os.getpid()))
        t0, wall0 = time.monotonic(), time.time()
        os.kill(pid, signal.SIGKILL)
        pool.sync_weights()
        elapsed = time.monotonic() - t0
        engines = [
            ray.get(w.__ray_call__.remote(lambda a: a.engine.model.state_dict()))
            for w in pool.workers
        ]
        sent = ray.get(
            learner.workers[0].__ray_call__.remote(lambda a: a.learner.model.state_dict())
        )
    finally:
        backend.shutdown()
        ray.shutdown()
    (seen,) = [r for r in caplog.records if "died during the weight broadcast" in r.message]
    detected = seen.created - wall0
    print(f"engine death seen and the group aborted in {detected:.1f} s; synced in {elapsed:.1f} s")
    assert detected < 30  # not the group's 600 s timeout
    assert elapsed < 120  # + a replacement engine started and given the weights
    assert pool.weight_meta is None and pool.restarts == 1
    for engine in engines:
        assert all(torch.equal(engine[k], v.to(engine[k].dtype)) for k, v in sent.items())
