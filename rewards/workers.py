"""Reward worker processes: run verifier items with a hard per-item timeout.

A worker that overruns its item's deadline or dies (a segfault in a C extension, `os._exit`) is
killed and replaced; the item scores 0 with a reason and the batch carries on. Workers are forked
from a `forkserver` that has `rewards` preloaded, so replacing one costs milliseconds.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import pickle
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.context import BaseContext
from typing import Any

from rewards.score import Score, as_score

Item = tuple[str, dict[str, list[Any]]]  # (completion, one-item columns)

_CONTEXT: BaseContext | None = None


def _context() -> BaseContext:
    global _CONTEXT
    if _CONTEXT is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["rewards"])
        _CONTEXT = ctx
    return _CONTEXT


def _serve(conn: multiprocessing.connection.Connection) -> None:
    """Worker loop: receive (pickled fn, completion, columns), answer with a Score or an error."""
    while True:
        try:
            payload, completion, columns = conn.recv()
        except EOFError:
            return
        try:
            fn = pickle.loads(payload)
            out = fn([completion], **columns)
            if len(out) != 1:
                raise ValueError(f"returned {len(out)} scores for 1 completion")
            conn.send(("ok", as_score(out[0])))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"[:300]))


class _Worker:
    def __init__(self, ctx: BaseContext) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        self.index: int | None = None
        self.deadline = 0.0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


class WorkerPool:
    """`size` persistent worker processes; `map` scores items with at most `size` in flight."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()

    def map(
        self, fn: Callable[..., list[Any]], items: Sequence[Item], timeout: float
    ) -> list[Score]:
        payload = pickle.dumps(fn)
        with self._lock:
            return self._map(payload, items, timeout)

    def _map(self, payload: bytes, items: Sequence[Item], timeout: float) -> list[Score]:
        results: list[Score | None] = [None] * len(items)
        todo = list(range(len(items)))[::-1]
        while len(self._workers) < min(self.size, len(items)):
            self._workers.append(_Worker(_context()))
        while todo or any(w.index is not None for w in self._workers):
            for worker in self._workers:
                if worker.index is None and todo:
                    i = todo.pop()
                    worker.conn.send((payload, *items[i]))
                    worker.index, worker.deadline = i, time.monotonic() + timeout
            busy = [w for w in self._workers if w.index is not None]
            wait_s = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            ready = multiprocessing.connection.wait([w.conn for w in busy], timeout=wait_s)
            for worker in busy:
                i = worker.index
                if worker.conn in ready:
                    results[i] = self._receive(worker)  # type: ignore[index]
                elif time.monotonic() >= worker.deadline:
                    results[i] = Score(0.0, f"timed out after {timeout:g}s", "timeout")  # type: ignore[index]
                    self._replace(worker)
        return [r if r is not None else Score(0.0, "not scored", "error") for r in results]

    def _receive(self, worker: _Worker) -> Score:
        try:
            status, value = worker.conn.recv()
        except (EOFError, OSError):
            code = worker.proc.exitcode
            self._replace(worker)
            return Score(0.0, f"reward worker died (exit code {code})", "error")
        worker.index = None
        return value if status == "ok" else Score(0.0, f"verifier raised {value}", "error")

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers[self._workers.index(worker)] = _Worker(_context())

    def close(self) -> None:
        with self._lock:
            for worker in self._workers:
                worker.kill()
            self._workers.clear()
