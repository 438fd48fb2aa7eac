"""omnisched's real training loop for the benchmarks: recipes derived from recipes/tiny.yaml,
runs through the `omnisched run` CLI (local Ray: rollout, reward, learner and scheduler actors)
with the peak memory of the whole process tree, and steady-state rates from metrics.jsonl.

What a train step's timestamps cover: each `kind: train` row of metrics.jsonl carries `time`,
the wall clock when the controller logged the step, so the time between two rows is everything
the driver did for one step: draw prompts, generate (rollout actor), score (reward actor),
advantages + learner step, weight sync to the rollout actor, the scheduler's `observe_step`
and the metrics write. Evaluations and checkpoints fall between phases, not between the rows
used here (`run.checkpoint_every: 0`).
"""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml
from common import GIB, ROOT, steady_rate
from peak_rss import tree_memory

TINY_RECIPE = ROOT / "recipes" / "tiny.yaml"


def recipe_data(
    model_path: str | Path,
    domains: Sequence[str],
    *,
    group_size: int,
    prompts: int,
    new_tokens: int,
    steps_per_phase: int,
    threads: int,
    eval_sizes: dict[str, int] | None = None,
    name: str = "bench",
    policy: str = "sequential",
) -> dict[str, Any]:
    """recipes/tiny.yaml with the given model folder, domains (in this order) and sizes;
    validated by omnisched's own schema before it is returned. `policy`: sequential (one
    phase per domain: the loop's throughput, no probe phases or evaluations mid-measurement)
    unless a benchmark measures a policy."""
    from omnisched.config import validate_recipe

    data = copy.deepcopy(yaml.safe_load(TINY_RECIPE.read_text()))
    by_name = {d["name"]: d for d in data["domains"]}
    unknown = [d for d in domains if d not in by_name]
    if unknown:
        raise ValueError(f"unknown domain(s) {unknown}; the tiny recipe has {list(by_name)}")
    data["domains"] = [by_name[d] for d in domains]
    for dom in data["domains"]:
        if eval_sizes and dom["name"] in eval_sizes:
            dom["eval_size"] = eval_sizes[dom["name"]]
    data["run"].update(name=name, threads=threads, checkpoint_every=0)
    data["model"]["path"] = str(model_path)
    # bf16 as the peers run (TRL's bf16=True): explicit, not the recipe's "auto" (float32 on a
    # CPU without native bf16), so both sides compute alike on any machine
    data["model"]["dtype"] = "bfloat16"
    data["learner"]["bf16"] = True
    data["rollout"].update(group_size=group_size, max_new_tokens=new_tokens)
    data["schedule"].update(
        policy=policy, prompts_per_step=prompts, steps_per_phase=steps_per_phase
    )
    validate_recipe(copy.deepcopy(data), source="bench recipe")
    return data


@dataclass
class CliRun:
    run_dir: Path | None
    returncode: int
    wall_s: float
    peak_pss_gib: float
    peak_rss_sum_gib: float
    stderr_tail: str


def run_cli(data: dict[str, Any], workdir: Path, memory: bool = True) -> CliRun:
    """`omnisched run RECIPE --quiet` on `data`; with `memory`, samples the process tree's
    memory meanwhile (peaks stay 0 without)."""
    workdir.mkdir(parents=True, exist_ok=True)
    recipe = workdir / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    cmd = [sys.executable, "-m", "omnisched.cli", "run", str(recipe), "--quiet"]
    cmd.append(f"run.output_dir={workdir / 'runs'}")
    err_path = workdir / "stderr.txt"
    start = time.perf_counter()
    with err_path.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
        sampler = MemorySampler(proc.pid)
        if memory:
            sampler.start()
        out, _ = proc.communicate()
        if memory:
            sampler.stop()
    wall = time.perf_counter() - start
    lines = out.strip().splitlines()
    run_dir = Path(lines[-1]) if proc.returncode == 0 and lines else None
    return CliRun(
        run_dir,
        proc.returncode,
        wall,
        sampler.peak_pss / GIB,
        sampler.peak_rss / GIB,
        err_path.read_text()[-3000:],
    )


class MemorySampler:
    """Peak PSS (and RSS summed) of a process tree, sampled on a daemon thread.

    PSS needs each process's smaps (milliseconds per process, which would load the 2 cores being
    measured), so it is read only when the cheap RSS sum comes within 5% of its peak so far."""

    def __init__(self, pid: int | None = None, interval: float = 0.5) -> None:
        self.root = psutil.Process(pid or os.getpid())
        self.interval = interval
        self.peak_pss = self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> MemorySampler:
        self._thread.start()
        return self

    def sample(self, force: bool = False) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        rss = 0
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                rss += proc.memory_info().rss
        if force or rss >= 0.95 * self.peak_rss:
            with contextlib.suppress(psutil.NoSuchProcess):
                self.peak_pss = max(self.peak_pss, tree_memory(self.root)[1])
        self.peak_rss = max(self.peak_rss, rss)

    def reset(self) -> None:
        self.peak_pss = self.peak_rss = 0
        self.sample(force=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


def train_rows(run_dir: Path) -> list[dict[str, Any]]:
    from omnisched.metrics.logger import read_metrics

    return read_metrics(run_dir, kind="train")


def timing_row(run_dir: Path) -> dict[str, Any]:
    from omnisched.metrics.logger import read_metrics

    rows = read_metrics(run_dir, kind="timing")
    if not rows:
        raise RuntimeError(f"{run_dir}/metrics.jsonl has no `kind: timing` row")
    return rows[-1]


def steady_stats(rows: list[dict[str, Any]], warmup: int, samples_per_step: int) -> dict[str, Any]:
    """Rates over the train rows after the first `warmup`, from their log timestamps."""
    ends = [r["time"] for r in rows]
    samples = [samples_per_step] * len(rows)
    tokens = [r["completion_len"] * samples_per_step for r in rows]
    kept = rows[warmup:]

    def mean(key: str) -> float:
        return sum(float(r.get(key, 0.0)) for r in kept) / len(kept)

    return {
        "steps_measured": len(kept),
        "samples_per_s": steady_rate(ends, samples, warmup),
        "tokens_per_s": steady_rate(ends, tokens, warmup),
        "step_s": (ends[-1] - ends[warmup - 1]) / len(kept),
        "inside_step_s": mean("time/step_s"),
        "generate_s": mean("time/generate_s"),
        "score_s": mean("time/score_s"),
        "learn_sync_s": mean("time/learn_sync_s"),
        "learner_step_s": mean("learner/step_time_s"),
        "completion_len": mean("completion_len"),
        "samples_trained": mean("samples_trained"),
        "reward_mean": mean("reward/mean"),
    }
