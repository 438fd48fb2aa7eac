"""A pool of same-kind workers that survives worker deaths.

Calls fan out over the pool's workers; when a worker process dies (a Ray actor killed, OOM), the
dead workers are replaced in the placement-group bundles they held and the calls are retried.
`restarts` counts replacements (logged as `restarts/<kind>`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from omnisched.orchestration.backend import Backend

log = logging.getLogger(__name__)
ATTEMPTS = 3
Call = tuple[int, Callable[..., Any], tuple[Any, ...]]  # (worker index, method, args)


class WorkerPool:
    """Subclasses say how to build worker `index` (`spawn`) and what a replacement needs before
    it serves (`prepare_replacement`, e.g. the current weights)."""

    kind = "worker"

    def __init__(self, backend: Backend, bundles: Sequence[int | None]) -> None:
        self.backend = backend
        self.bundles = list(bundles)
        self.restarts = 0
        self.workers: list[Any] = [self.spawn(i) for i in range(len(self.bundles))]

    def spawn(self, index: int) -> Any:
        raise NotImplementedError  # subclass hook: builds worker `index` in bundles[index]

    def prepare_replacement(self, index: int, worker: Any) -> None:
        """Bring a freshly spawned replacement up to date before the calls are retried."""

    def run(self, calls: Sequence[Call]) -> list[Any]:
        """Every call, at once; results in call order. Dead workers are replaced and the calls
        retried (up to ATTEMPTS times); other errors propagate."""
        for attempt in range(ATTEMPTS):
            futures = [self.backend.call(self.workers[i], m, *a) for i, m, a in calls]
            try:
                return self.backend.gather(futures)
            except Exception as exc:
                if attempt == ATTEMPTS - 1 or not self.backend.is_worker_failure(exc):
                    raise
                log.warning("a %s worker died (%s); restarting it and retrying", self.kind, exc)
                self.replace_dead()
        raise AssertionError("unreachable")

    def on_all(self, method: Callable[..., Any], *args: Any) -> list[Any]:
        """`method(*args)` on every worker."""
        return self.run([(i, method, args) for i in range(len(self.workers))])

    def replace_dead(self) -> None:
        for i, worker in enumerate(self.workers):
            if self.backend.alive(worker):
                continue
            self.backend.kill(worker)
            self.restarts += 1
            self.workers[i] = self.spawn(i)  # into the bundle its predecessor freed
            self.prepare_replacement(i, self.workers[i])
