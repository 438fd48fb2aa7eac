"""The model folder a run's RL starts from: `model.path` as given, or the tiny model warm-started
by SFT on the domains' demonstrations (cached on disk by everything that changes it).

On a cache miss, SFT runs as a one-off task in a process of its own (under Ray), so its heap goes
back to the OS before RL starts; its progress file is tailed into `progress` events.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omnisched.config.schema import Recipe
from omnisched.domains import Domain
from omnisched.model import cache as model_cache
from omnisched.orchestration.backend import Backend
from omnisched.orchestration.workers import release_freed_memory

Progress = Callable[[str, dict[str, Any]], None]


def demonstrations(recipe: Recipe, domains: dict[str, Domain]) -> list[tuple[str, str]]:
    """Every domain's warm-start (prompt, completion) pairs, drawn with the run's demo seed."""
    rng = random.Random(recipe.data_seed + 1)
    default = recipe.model.warm_start.examples_per_domain
    return [
        pair
        for cfg in recipe.domains
        for pair in domains[cfg.name].demonstrations(
            rng, default if cfg.demos is None else cfg.demos
        )
    ]


def warm_start(
    recipe: Recipe,
    domains: dict[str, Domain],
    backend: Backend,
    run_dir: Path,
    progress: Progress = lambda event, info: None,
) -> str:
    """The folder RL starts from (see the module docstring)."""
    demos = demonstrations(recipe, domains)
    target, ready = model_cache.resolve(recipe.model, demos, recipe.data_seed)
    if ready:
        return str(target)
    progress("warm_start", {"examples": len(demos)})
    log_path = Path(run_dir) / "warm_start_progress.jsonl"
    log_path.unlink(missing_ok=True)
    r = recipe
    future = backend.submit(
        train_in_worker, r.model, demos, r.data_seed, r.run.threads, str(log_path)
    )
    seen = 0
    while True:
        finished = backend.done(future, timeout=1.0)
        if log_path.exists():
            for line in log_path.read_text().splitlines()[seen:]:
                with contextlib.suppress(ValueError):  # a line still being written
                    progress("sft", json.loads(line))
                    seen += 1
        if finished:
            path = backend.gather([future])[0]
            release_freed_memory()  # inline: the SFT model and optimizer are garbage now
            return path


def train_in_worker(
    model_cfg: Any, demos: list[tuple[str, str]], seed: int, threads: int, progress_path: str
) -> str:
    """Entry point of the warm-start task. Defined in this torch-free module, so the driver can
    hand it to Ray without importing torch itself; torch loads in the worker process."""
    from omnisched.model.warm_start import warm_start_task

    return warm_start_task(model_cfg, demos, seed, threads, progress_path)
