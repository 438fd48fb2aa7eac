"""Verdict cache: repeated (judge, prompt, completion, reference) items are paid for once.

An in-memory LRU in front of an optional sqlite file. sqlite, not JSON, because several reward
workers may share one cache folder: sqlite serialises their writes and a crash never leaves a
half-written file. Only successful verdicts are stored; failures are retried next time.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from judges.base import Verdict


def cache_key(identity: str, prompt: str, completion: str, reference: str) -> str:
    """sha256 of the judge identity (backend, model, template, decoding) and the item."""
    blob = json.dumps([identity, prompt, completion, reference], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class VerdictCache:
    """LRU of `size` verdicts; with `directory`, also `directory/verdicts.sqlite` on disk."""

    def __init__(self, size: int = 4096, directory: str | Path | None = None) -> None:
        self.size = size
        self._lru: OrderedDict[str, Verdict] = OrderedDict()
        self._lock = threading.Lock()
        self.path: Path | None = None
        if directory is not None:
            self.path = Path(directory).expanduser() / "verdicts.sqlite"
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS verdicts "
                    "(key TEXT PRIMARY KEY, score REAL NOT NULL, rationale TEXT NOT NULL)"
                )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One short-lived connection per use, committed on success and always closed."""
        with closing(sqlite3.connect(str(self.path), timeout=30.0)) as db, db:
            yield db

    def get_many(self, keys: list[str]) -> dict[str, Verdict]:
        """The cached verdicts among `keys` (memory first, then disk)."""
        found: dict[str, Verdict] = {}
        with self._lock:
            for key in keys:
                if key in self._lru:
                    self._lru.move_to_end(key)
                    found[key] = self._lru[key]
        missing = [k for k in keys if k not in found]
        if self.path is not None and missing:
            with self._connect() as db:
                for start in range(0, len(missing), 500):  # sqlite caps bound parameters
                    chunk = missing[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    rows = db.execute(
                        f"SELECT key, score, rationale FROM verdicts WHERE key IN ({marks})", chunk
                    ).fetchall()
                    for key, score, rationale in rows:
                        found[key] = Verdict(score=score, rationale=rationale)
            self._remember({k: v for k, v in found.items() if k in set(missing)})
        return found

    def put_many(self, verdicts: dict[str, Verdict]) -> None:
        """Store successful verdicts (callers never pass fallbacks)."""
        if not verdicts:
            return
        self._remember(verdicts)
        if self.path is not None:
            rows = [(k, v.score, v.rationale) for k, v in verdicts.items()]
            with self._connect() as db:
                db.executemany("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?)", rows)

    def _remember(self, verdicts: dict[str, Verdict]) -> None:
        with self._lock:
            for key, verdict in verdicts.items():
                self._lru[key] = verdict
                self._lru.move_to_end(key)
            while len(self._lru) > self.size:
                self._lru.popitem(last=False)

    def __len__(self) -> int:
        return len(self._lru)
