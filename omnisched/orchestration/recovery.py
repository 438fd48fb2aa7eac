"""Learner failure: a dead learner rank ends the run's world, which resumes from its checkpoint.

A learner rank holds state no peer can rebuild (its optimizer shard, under ZeRO its parameter
shard), and its peers wait for it inside collectives. So when one dies, the backend's gather fails
at once (it does not wait for the stuck peers), every actor of the run is ended (the placement
group with them), and the run resumes as `omnisched run --resume` would: from the latest step
checkpoint, with metrics.jsonl cut back to it, so every step is logged once. At most
`run.max_restarts` times; `restarts/learner` counts them in metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnisched.orchestration.backend import Backend

if TYPE_CHECKING:
    from omnisched.orchestration.controller import Controller

log = logging.getLogger(__name__)


def run_with_restarts(ctrl: Controller, backend: Backend) -> Path:
    """`ctrl.train(backend)`, resumed from the last checkpoint after each learner death."""
    while True:
        try:
            return ctrl.train(backend)
        except Exception as exc:
            if not learner_died(ctrl, backend, exc):
                raise
            if ctrl.learner_restarts >= ctrl.recipe.run.max_restarts:
                log.error(
                    "a learner rank died; run.max_restarts=%d restarts spent",
                    ctrl.recipe.run.max_restarts,
                )
                raise
            log.warning("a learner rank died (%s); resuming from the last checkpoint", exc)
            teardown(ctrl, backend)
            restart_state(ctrl)


def learner_died(ctrl: Controller, backend: Backend, exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says that a rank of the run's learner died."""
    learner = getattr(ctrl, "learner", None)
    if learner is None:
        return False
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if backend.died(exc, learner.workers):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def teardown(ctrl: Controller, backend: Backend) -> None:
    """Close the run's metrics and end every actor it started (their placement group is
    released when the next `setup` reserves a new one)."""
    with contextlib.suppress(Exception):
        ctrl.metrics.close()
    workers: list[Any] = []
    for pool in ("learner", "rollout", "rewards"):
        workers += getattr(getattr(ctrl, pool, None), "workers", [])
    scheduler = getattr(ctrl, "scheduler", None)
    if scheduler is not None:
        workers.append(scheduler.worker)
    for worker in workers:
        backend.kill(worker)


def restart_state(ctrl: Controller) -> None:
    """Forget the dead attempt's progress: the next `train` resumes from the checkpoint."""
    ctrl.learner_restarts += 1
    ctrl.resume, ctrl.start, ctrl.step = True, None, 0
    ctrl.rng.seed(ctrl.recipe.run.seed)
    ctrl.timings = dict.fromkeys(ctrl.timings, 0.0)
