"""`score_batch`: run a verifier over a batch with bounded concurrency and per-item timeouts.

Every item is scored on its own (`fn([completion], **one_item_columns)`), so one slow, hanging or
crashing item scores 0 with a reason and never stalls or kills the batch:
- verifiers marked `isolated` (they contain their own work, like `code`, whose programs run in
  the sandbox with their own kill) run on threads of this process;
- any other verifier runs in reward worker processes (`workers.py`) that are killed and replaced
  when an item overruns. A verifier that cannot be pickled (a lambda, a closure) runs on threads:
  its items still time out, but a hung thread keeps running in the background (logged).
"""

from __future__ import annotations

import logging
import pickle
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from omnisched.errors import DataError
from rewards.score import Score, as_score
from rewards.workers import Item, WorkerPool

log = logging.getLogger(__name__)
_POOLS: dict[int, WorkerPool] = {}
_POOLS_LOCK = threading.Lock()


def isolated(fn: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
    """Mark a verifier whose items bound their own run time and cannot crash this process."""
    fn.isolated = True  # type: ignore[attr-defined]
    return fn


def split_items(completions: Sequence[str], columns: dict[str, Sequence[Any]]) -> list[Item]:
    """One (completion, {column: [value]}) per completion; columns must align with completions."""
    n = len(completions)
    for name, values in columns.items():
        if len(values) != n:
            raise DataError(f"column '{name}' has {len(values)} values for {n} completions")
    return [(c, {k: [v[i]] for k, v in columns.items()}) for i, c in enumerate(completions)]


def score_batch(
    fn: Callable[..., list[Any]],
    completions: Sequence[str],
    columns: dict[str, Sequence[Any]],
    *,
    max_workers: int = 2,
    timeout: float = 10.0,
) -> list[Score]:
    """Scores aligned with `completions`; errors and timeouts become Score(0.0, reason)."""
    if max_workers < 1 or timeout <= 0:
        raise ValueError(f"need max_workers >= 1 and timeout > 0, got {max_workers}, {timeout}")
    items = split_items(completions, columns)
    if not items:
        return []
    if getattr(fn, "isolated", False):
        return _on_threads(fn, items, max_workers, timeout)
    try:
        pickle.dumps(fn)
    except Exception as exc:
        log.warning("verifier %r cannot be pickled (%s): scoring it on threads", fn, exc)
        return _on_threads(fn, items, max_workers, timeout)
    return _pool(max_workers).map(fn, items, timeout)


def _pool(size: int) -> WorkerPool:
    with _POOLS_LOCK:
        if size not in _POOLS:
            _POOLS[size] = WorkerPool(size)
        return _POOLS[size]


def _score_one(fn: Callable[..., list[Any]], item: Item) -> Score:
    completion, cols = item
    try:
        out = fn([completion], **cols)
        if len(out) != 1:
            raise ValueError(f"returned {len(out)} scores for 1 completion")
        return as_score(out[0])
    except Exception as exc:
        return Score(0.0, f"verifier raised {type(exc).__name__}: {exc}"[:300], "error")


def _on_threads(
    fn: Callable[..., list[Any]], items: list[Item], max_workers: int, timeout: float
) -> list[Score]:
    """Daemon threads, at most `max_workers` running items that have not timed out."""
    results: list[Score | None] = [None] * len(items)
    done: queue.Queue[tuple[int, Score]] = queue.Queue()
    running: dict[int, float] = {}  # index -> deadline
    todo = list(range(len(items)))[::-1]

    def work(i: int) -> None:
        done.put((i, _score_one(fn, items[i])))

    while todo or running:
        while todo and len(running) < max_workers:
            i = todo.pop()
            running[i] = time.monotonic() + timeout
            threading.Thread(target=work, args=(i,), daemon=True).start()
        try:
            i, score = done.get(timeout=max(0.0, min(running.values()) - time.monotonic()))
            if i in running:
                results[i] = score
                del running[i]
        except queue.Empty:
            now = time.monotonic()
            for i in [i for i, deadline in running.items() if now >= deadline]:
                results[i] = Score(0.0, f"timed out after {timeout:g}s", "timeout")
                del running[i]
                log.warning("verifier %r: item %d timed out; its thread is abandoned", fn, i)
    return [r if r is not None else Score(0.0, "not scored", "error") for r in results]
