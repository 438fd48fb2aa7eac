"""Keep triton's teardown noise out of a finished command's output.

torch and vLLM import triton, whose nanobind bindings print "nanobind: leaked N instances /
types / functions" (a line per leaked object, then a link) to stderr while the interpreter tears
its modules down: after the command has finished and printed its result, harmless, but it reads
like a crash at the end of every in-process run. `drop_teardown_noise` routes what is written to
stderr from then on through a small filter process that drops those lines and passes everything
else through unchanged; the filter ends when this process closes its stderr, at exit.
"""

from __future__ import annotations

import os
import sys

NOISE = (b"nanobind: ", b" - leaked ", b" - ... skipped remainder", b"See https://nanobind")

_FILTER = f"""
import sys
noise = {NOISE!r}
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    if not line.startswith(noise):
        out.write(line)
        out.flush()
"""


def drop_teardown_noise() -> None:
    """From now until exit, stderr goes through the filter (only once triton was imported: a
    torch-free process, like the Ray driver, prints none of it). The filter is spawned without a
    `Popen` object, which would warn at exit that its process is still running."""
    if "triton" not in sys.modules or not hasattr(os, "posix_spawn"):
        return
    sys.stderr.flush()
    read, write = os.pipe()  # both ends close-on-exec: the filter keeps only its stdin copy
    actions = [(os.POSIX_SPAWN_DUP2, read, 0), (os.POSIX_SPAWN_DUP2, 2, 1)]  # out: real stderr
    try:
        os.posix_spawn(sys.executable, [sys.executable, "-S", "-c", _FILTER], os.environ,
                       file_actions=actions)  # fmt: skip
    except OSError:  # no process to spare: the noise stays, the exit is unaffected
        os.close(write)
        return
    finally:
        os.close(read)
    os.dup2(write, 2)  # fd 2 is now the pipe's only write end...
    os.close(write)  # ...so the filter sees EOF when this process exits
