"""Client side of the sandbox: starts the server process and matches replies to requests."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from omnisched.errors import OmniError

log = logging.getLogger(__name__)
SERVER = Path(__file__).with_name("server.py")
SERVER_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
REPLY_GRACE_S = 5.0  # beyond the program's own timeout, for forking and reporting


class SandboxError(OmniError):
    """The sandbox cannot run programs here (not Linux, or namespaces required but refused)."""


class SandboxLimits(BaseModel):
    """Resource limits for one program; `cpu_s` defaults to the wall-clock timeout + 1."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(5.0, gt=0, description="wall clock; the whole process tree is killed")
    cpu_s: int | None = Field(None, ge=1)
    memory_mb: int = Field(1024, ge=64, description="address space (RLIMIT_AS)")
    file_size_kb: int = Field(1024, ge=1, description="largest file it may write (RLIMIT_FSIZE)")
    max_processes: int = Field(16, ge=1, description="RLIMIT_NPROC")
    max_open_files: int = Field(64, ge=8)
    output_kb: int = Field(64, ge=1, description="stdout+stderr beyond this is cut off")
    isolation: Literal["auto", "interpreter"] = Field(
        "auto", description="auto: kernel namespaces where allowed; interpreter: audit hook only"
    )
    require_namespaces: bool = Field(False, description="refuse to run without namespaces")


@dataclass(frozen=True)
class RunResult:
    passed: bool
    reason: str | None  # why it did not pass
    elapsed: float  # seconds


class Sandbox:
    """Thread-safe: many threads may call `run` at once; the server runs their programs in
    parallel. The server starts on first use and again after a crash or a fork of this process."""

    def __init__(self, limits: SandboxLimits | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._pid_of_owner = -1
        self._pending: dict[int, Future] = {}
        self._ids = itertools.count()
        self.mode = "not started"
        self.notes: list[str] = []

    def run(self, program: str, tests: str, timeout: float | None = None) -> RunResult:
        """Run `program`, then `tests` (Python with asserts) against it, in a fresh child."""
        timeout = float(timeout or self.limits.timeout_s)
        future: Future = Future()
        with self._lock:
            proc = self._ensure_started()
            job_id = next(self._ids)
            self._pending[job_id] = future
            request = {"id": job_id, "program": program, "tests": tests, "timeout": timeout}
            try:
                proc.stdin.write((json.dumps(request) + "\n").encode())  # type: ignore[union-attr]
                proc.stdin.flush()  # type: ignore[union-attr]
            except (BrokenPipeError, OSError):
                self._pending.pop(job_id, None)
                self._restart(proc, "the sandbox server was gone")
                return RunResult(False, "sandbox server died; restarted", 0.0)
        try:
            return future.result(timeout=timeout + REPLY_GRACE_S)
        except FutureTimeout:
            with self._lock:
                self._pending.pop(job_id, None)
                self._restart(proc, f"no reply within {timeout + REPLY_GRACE_S:g}s")
            return RunResult(False, "sandbox server did not answer; restarted", timeout)

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                self._stop(self._proc)
                self._proc = None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_started(self) -> subprocess.Popen:
        alive = self._proc is not None and self._proc.poll() is None
        if alive and self._pid_of_owner == os.getpid():
            return self._proc  # type: ignore[return-value]
        if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"):
            raise SandboxError("the code sandbox needs Linux >= 5.3 (pidfd_open)")
        limits = self.limits.model_dump()
        limits["cpu_s"] = self.limits.cpu_s or math.ceil(self.limits.timeout_s) + 1
        config = {"limits": limits, "home": str(Path.home()), "isolation": self.limits.isolation}
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(SERVER), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=SERVER_ENV,
            cwd=tempfile.gettempdir(),
            close_fds=True,
            start_new_session=True,
        )
        ready = json.loads(proc.stdout.readline() or b"{}")  # type: ignore[union-attr]
        if not ready.get("ready"):
            proc.kill()
            raise SandboxError(f"the sandbox server failed to start (exit {proc.wait()})")
        self.mode, self.notes = ready["mode"], ready["notes"]
        if self.mode == "none" and self.limits.require_namespaces:
            self._stop(proc)
            raise SandboxError(
                f"kernel namespaces are unavailable ({'; '.join(self.notes)}) and the sandbox "
                "was configured with require_namespaces=True"
            )
        if self.mode == "none" and self.limits.isolation == "auto":
            log.warning("code sandbox without namespaces: %s", "; ".join(self.notes))
        self._proc, self._pid_of_owner = proc, os.getpid()
        threading.Thread(target=self._read_replies, args=(proc,), daemon=True).start()
        return proc

    def _read_replies(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            reply = json.loads(line)
            future = self._pending.pop(reply["id"], None)
            if future is not None:
                future.set_result(RunResult(reply["passed"], reply["reason"], reply["elapsed"]))
        with self._lock:  # the server is gone: whoever still waits on it gets a failure
            if self._proc is proc:
                self._fail_pending("sandbox server died")
                self._proc = None

    def _fail_pending(self, reason: str) -> None:
        for future in self._pending.values():
            future.set_result(RunResult(False, reason, 0.0))
        self._pending.clear()

    def _restart(self, proc: subprocess.Popen, why: str) -> None:
        log.warning("restarting the code sandbox server: %s", why)
        self._stop(proc)
        if self._proc is proc:
            self._proc = None
        self._fail_pending(f"sandbox server restarted: {why}")

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
