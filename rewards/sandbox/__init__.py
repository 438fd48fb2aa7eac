"""A hardened sandbox for executing model-written Python against tests (Linux).

`Sandbox.run(program, tests)` -> `RunResult(passed, reason, elapsed)`. A long-lived server
process (`server.py`, `python -I -S`, minimal environment, no secrets) forks a fresh isolated
child per program; see `server.py` for the per-program isolation and `harness.py` for why the
verdict cannot be forged.

Network: the server enters a fresh network namespace at start (as root directly, otherwise
inside an unprivileged user namespace). Where the kernel refuses namespaces (`mode == "none"`,
e.g. a container whose seccomp profile blocks `unshare`, or `isolation="interpreter"`), there is
no kernel-level isolation of network, files or processes: the interpreter-level guard (an audit
hook, installed before the program runs and impossible to remove) still refuses sockets,
subprocesses, fork, signals to other processes, ctypes and file access outside the work dir
and the stdlib, and rlimits, the process group and the wall-clock kill still apply. Set
`require_namespaces=True` to refuse to run instead; `Sandbox.mode` and `Sandbox.notes` say
which protections are active.
"""

from rewards.sandbox.client import RunResult, Sandbox, SandboxError, SandboxLimits

__all__ = ["RunResult", "Sandbox", "SandboxError", "SandboxLimits"]
