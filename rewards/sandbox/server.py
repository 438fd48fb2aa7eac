"""Sandbox server (a zygote): forks one fresh, isolated child per program.

Started by `rewards.sandbox.Sandbox` as `python -I -S server.py CONFIG_JSON` with a minimal
environment; stdlib only. Requests arrive as JSON lines on stdin, replies leave as JSON lines on
stdout. Forking from this warm interpreter costs a few milliseconds per program instead of the
tens a fresh interpreter would.

Per program: a child in its own session and process group, in a fresh mount + PID namespace
(its PID 1 dies -> the kernel kills everything it started), an empty tmpfs as working dir and
over /proc, an unused uid when the server runs as root, rlimits, stdin from /dev/null, stdout
and stderr into a capped pipe, every other descriptor closed except the verdict pipe.
The program runs as PID 1 of its namespace, so signals it sends itself with a default action
(e.g. `raise(SIGSEGV)`) are ignored by the kernel; faults, rlimits and SIGKILL still end it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import selectors
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness  # noqa: E402
import isolation  # noqa: E402

sys.path.remove(HERE)
# Modules programs commonly import, loaded once here so forked children do not pay for them.
WARM = [
    "bisect",
    "collections",
    "copy",
    "dataclasses",
    "decimal",
    "fractions",
    "functools",
    "hashlib",
    "heapq",
    "itertools",
    "math",
    "operator",
    "random",
    "re",
    "statistics",
    "string",
    "typing",
]
WORKDIR = "/tmp"
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": WORKDIR, "TMPDIR": WORKDIR}
SIGNAL_REASONS = {
    signal.SIGKILL: "was killed (memory, CPU or process limit)",
    signal.SIGXCPU: "ran out of CPU time",
    signal.SIGXFSZ: "exceeded the file size limit",
    signal.SIGSEGV: "crashed (SIGSEGV)",
    signal.SIGABRT: "aborted (SIGABRT)",
    signal.SIGBUS: "crashed (SIGBUS)",
    signal.SIGPIPE: "exceeded the output limit",
}
UID_BASE = 1_700_000_000


class Job:
    def __init__(self, request: dict, pid: int, verdict_fd: int, out_fd: int, nonce: bytes):
        self.id = request["id"]
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.verdict_fd = verdict_fd
        self.out_fd: int | None = out_fd
        self.nonce = nonce
        self.started = time.monotonic()
        self.deadline = self.started + float(request["timeout"])
        self.timeout = float(request["timeout"])
        self.output = bytearray()
        self.timed_out = False


class Server:
    def __init__(self, config: dict) -> None:
        self.cfg = config
        self.sel = selectors.DefaultSelector()
        self.jobs: dict[int, Job] = {}
        self.counter = 0
        self.inbuf = b""
        self.read_roots = (*(p for p in sys.path if p), "/usr/share/zoneinfo")
        if config.get("isolation", "auto") == "auto":
            self.mode, self.notes = isolation.enter_server_namespaces(
                config.get("home"), list(self.read_roots)
            )
        else:
            self.mode, self.notes = "none", ["namespaces disabled by configuration"]
        if self.mode == "none":
            import tempfile

            self.scratch = tempfile.mkdtemp(prefix="omnisched-sandbox-")

    def reply(self, message: dict) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(1, data) :]

    def serve(self) -> None:
        self.reply({"ready": True, "mode": self.mode, "notes": self.notes})
        os.set_blocking(0, False)
        self.sel.register(0, selectors.EVENT_READ, ("stdin", None))
        while True:
            timeout = None
            if self.jobs:
                timeout = max(0.0, min(j.deadline for j in self.jobs.values()) - time.monotonic())
            for key, _ in self.sel.select(timeout):
                kind, job = key.data
                if kind == "stdin" and not self.read_requests():
                    return self.shutdown()
                if kind == "out":
                    self.read_output(job)
                elif kind == "exit" and job.pid in self.jobs:
                    self.finish(job)
            now = time.monotonic()
            for job in list(self.jobs.values()):
                if now >= job.deadline and not job.timed_out:
                    job.timed_out = True
                    self.kill(job)

    def read_requests(self) -> bool:
        try:
            chunk = os.read(0, 1 << 20)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        self.inbuf += chunk
        *lines, self.inbuf = self.inbuf.split(b"\n")
        for line in lines:
            if line.strip():
                self.start(json.loads(line))
        return True

    def start(self, request: dict) -> None:
        nonce = os.urandom(16).hex().encode()
        verdict_r, verdict_w = os.pipe()
        out_r, out_w = os.pipe()
        self.counter += 1
        pid = os.fork()
        if pid == 0:
            self.child(request, verdict_w, out_w, nonce)
        os.close(verdict_w)
        os.close(out_w)
        os.set_blocking(verdict_r, False)
        os.set_blocking(out_r, False)
        job = Job(request, pid, verdict_r, out_r, nonce)
        self.jobs[pid] = job
        self.sel.register(out_r, selectors.EVENT_READ, ("out", job))
        self.sel.register(job.pidfd, selectors.EVENT_READ, ("exit", job))

    def child(self, request: dict, verdict_w: int, out_w: int, nonce: bytes) -> None:
        """The forked child: isolate, then run the program; never returns."""
        try:
            self.redirect(out_w, verdict_w)  # first: drop every other job's and the server's fds
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.setsid()
            workdir = WORKDIR if self.mode != "none" else self.scratch
            if self.mode != "none":
                isolation.enter_item_namespaces()
                pid1 = os.fork()
                if pid1:
                    os._exit(self.wait_exit_code(pid1))
                isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)
                isolation.prepare_item_filesystem(workdir)
            else:
                workdir = os.path.join(workdir, f"item-{os.getpid()}")
                os.mkdir(workdir, 0o700)
            if self.mode == "root":
                isolation.drop_privileges(UID_BASE + self.counter % 1_000_000, workdir)
            isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)
            isolation.prctl(isolation.PR_SET_DUMPABLE, 0)
            os.chdir(workdir)
            os.environ.clear()
            os.environ.update({**ENV, "HOME": workdir, "TMPDIR": workdir})
            limits = self.cfg["limits"]
            isolation.apply_rlimits(
                cpu_s=int(limits["cpu_s"]),
                memory_bytes=int(limits["memory_mb"]) << 20,
                file_bytes=int(limits["file_size_kb"]) << 10,
                nproc=int(limits["max_processes"]),
                nofile=int(limits["max_open_files"]),
            )
            for name in ("__main__", "harness", "isolation"):
                sys.modules.pop(name, None)
            harness.run(request["program"], request["tests"], 3, nonce, workdir, self.read_roots)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.write(2, f"sandbox setup failed: {exc!r}".encode())
        finally:
            os._exit(70)

    @staticmethod
    def wait_exit_code(pid: int) -> int:
        """Wait for PID 1 of the item's namespace; mirror its end as an exit code (128+signal)."""
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        return 128 - code if code < 0 else code

    @staticmethod
    def redirect(out_w: int, verdict_w: int) -> None:
        """stdin /dev/null; stdout, stderr: the capped pipe; fd 3: the verdict pipe; no others."""
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        os.dup2(verdict_w, 3)
        os.closerange(4, 1 << 16)

    def read_output(self, job: Job) -> None:
        if job.out_fd is None:
            return
        try:
            chunk = os.read(job.out_fd, 1 << 16)
        except BlockingIOError:
            return
        if chunk:
            job.output += chunk
        cap = int(self.cfg["limits"]["output_kb"]) << 10
        if not chunk or len(job.output) > cap:
            self.close_output(job)  # over the cap the writer gets EPIPE: output stops here

    def close_output(self, job: Job) -> None:
        if job.out_fd is not None:
            self.sel.unregister(job.out_fd)
            os.close(job.out_fd)
            job.out_fd = None

    def kill(self, job: Job) -> None:
        for kill, target in ((os.killpg, job.pid), (os.kill, job.pid)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(target, signal.SIGKILL)

    def finish(self, job: Job) -> None:
        _, status = os.waitpid(job.pid, 0)
        self.kill(job)  # leftovers in its process group (namespace-less mode)
        code = os.waitstatus_to_exitcode(status)
        if job.out_fd is not None:
            self.read_output(job)
            self.close_output(job)
        verdict = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(job.verdict_fd, 1 << 16):
                verdict += chunk
        os.close(job.verdict_fd)
        self.sel.unregister(job.pidfd)
        os.close(job.pidfd)
        del self.jobs[job.pid]
        passed, reason = self.judge(job, verdict, code)
        elapsed = time.monotonic() - job.started
        self.reply({"id": job.id, "passed": passed, "reason": reason, "elapsed": elapsed})
        if self.mode == "none":
            import shutil

            shutil.rmtree(os.path.join(self.scratch, f"item-{job.pid}"), ignore_errors=True)

    def judge(self, job: Job, verdict: bytes, code: int) -> tuple[bool, str | None]:
        lines = verdict.split(b"\n")
        if job.nonce + b" PASS" in lines:
            return True, None
        for line in lines:
            if line.startswith(job.nonce + b" FAIL "):
                return False, line[len(job.nonce) + 6 :].decode("utf-8", "replace")
        if job.timed_out:
            return False, f"timed out after {job.timeout:g}s (wall clock)"
        sig = -code if code < 0 else code - 128 if code > 128 else 0
        if sig:
            why = SIGNAL_REASONS.get(sig, f"was killed by signal {sig}")
            return False, f"program {why}" + self.tail(job)
        return False, f"program exited with code {code} before the tests finished" + self.tail(job)

    @staticmethod
    def tail(job: Job) -> str:
        text = bytes(job.output[-300:]).decode("utf-8", "replace").strip()
        return f"; output: ...{text}" if text else ""

    def shutdown(self) -> None:
        for job in list(self.jobs.values()):
            self.kill(job)
        if self.mode == "none":
            import shutil

            shutil.rmtree(self.scratch, ignore_errors=True)


if __name__ == "__main__":
    for name in WARM:
        importlib.import_module(name)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    Server(json.loads(sys.argv[1])).serve()
