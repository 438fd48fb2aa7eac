"""Hostile programs against the code sandbox: 0 escapes, 0 false passes, and it keeps working.

"fail" cases carry tests the program cannot pass honestly: a PASS is a false pass. "blocked"
cases record what the attack obtained and their tests assert it obtained nothing: anything but
a PASS there is an escape (or a broken sandbox). Host-side checks look for marker files, a
connection to a listening socket and the survival of this process.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path

import pytest

from rewards.sandbox import Sandbox, SandboxLimits

GOOD = ("def f(x):\n    return x + 1\n", "assert f(1) == 2")
WRONG = "def f(x):\n    return x\n"
TESTS = "assert f(1) == 2\nassert f(5) == 6"
FAIL, BLOCKED = "fail", "blocked"


def cases(marker_dir: str, port: int) -> list[tuple[str, str, str, str]]:
    """(name, program, tests, expectation)."""
    m = marker_dir
    return [
        ("fork bomb", "import os\nwhile True:\n    os.fork()\n" + WRONG, TESTS, FAIL),
        ("fork bomb, raw", "import posix\nwhile True:\n    posix.fork()\n", TESTS, FAIL),
        (
            "multiprocessing",
            "import multiprocessing as mp\nmp.Process(target=print).start()\n" + WRONG,
            TESTS,
            FAIL,
        ),
        ("memory bomb", "x = bytearray(8 << 30)\n" + WRONG, TESTS, FAIL),
        ("memory creep", "l = []\nwhile True:\n    l.append(' ' * 10**7)\n", TESTS, FAIL),
        ("infinite loop", "while True:\n    pass\n", TESTS, FAIL),
        ("huge output", "while True:\n    print('x' * 100000)\n", TESTS, FAIL),
        ("long sleep", "import time\ntime.sleep(3600)\n", TESTS, FAIL),
        (
            "network connect",
            f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', "
            f"{port}), timeout=1)\n    got = True\nexcept Exception:\n    got = False\n",
            "assert got is False",
            BLOCKED,
        ),
        (
            "network, raw _socket",
            f"import _socket\ntry:\n    s = _socket.socket()\n    "
            f"s.connect(('127.0.0.1', {port}))\n    got = True\n"
            "except Exception:\n    got = False\n",
            "assert got is False",
            BLOCKED,
        ),
        (
            "write outside",
            f"try:\n    open('{m}/written', 'w').write('x')\nexcept Exception:\n    pass\n" + WRONG,
            TESTS,
            FAIL,
        ),
        (
            "write via os.open and ../",
            "import os\ntry:\n    fd = os.open('../../../../../../"
            f"{m}/os_open', os.O_CREAT | os.O_WRONLY)\n    os.write(fd, b'x')\nexcept Exception:\n"
            "    pass\n" + WRONG,
            TESTS,
            FAIL,
        ),
        (
            "symlink out",
            f"import os\ntry:\n    os.symlink('{m}', 'link')\n    open('link/"
            "symlinked', 'w').write('x')\nexcept Exception:\n    pass\n" + WRONG,
            TESTS,
            FAIL,
        ),
        (
            "read environment",
            "import os\nsecret = os.environ.get('OMNI_TEST_SECRET')\nnames = set(os.environ)\n",
            "assert secret is None\nassert names <= {'PATH', 'LANG', 'HOME', 'TMPDIR'}",
            BLOCKED,
        ),
        (
            "read home files",
            "import os\ntry:\n    got = open(os.path.expanduser('~root/.bashrc'))"
            ".read() or open('/root/.bashrc').read()\nexcept Exception:\n    got = None\n",
            "assert not got",
            BLOCKED,
        ),
        (
            "read host files",
            "try:\n    got = open('/etc/passwd').read()\nexcept Exception:\n    got = None\n",
            "assert not got",
            BLOCKED,
        ),
        (
            "read parent's environ",
            "import os\ntry:\n    got = open(f'/proc/{os.getppid()}/"
            "environ').read()\nexcept Exception:\n    got = None\n",
            "assert not got",
            BLOCKED,
        ),
        (
            "kill the parent",
            "import os, signal\nfor pid in (os.getppid(), -1, 1):\n    try:\n"
            "        os.kill(pid, signal.SIGKILL)\n    except Exception:\n        pass\n" + WRONG,
            TESTS,
            FAIL,
        ),
        (
            "subprocess",
            f"import subprocess\ntry:\n    subprocess.run(['sh', '-c', 'echo > "
            f"{m}/subprocess'])\nexcept Exception:\n    pass\n" + WRONG,
            TESTS,
            FAIL,
        ),
        (
            "os.system and exec",
            f"import os\ntry:\n    os.system('touch {m}/system')\n"
            f"except Exception:\n    pass\nos.execv('/bin/sh', ['sh', '-c', 'touch {m}/exec'])\n",
            TESTS,
            FAIL,
        ),
        ("ctypes segfault", "import ctypes\nctypes.string_at(0)\n", TESTS, FAIL),
        ("real segfault", "import faulthandler\nfaulthandler._sigsegv()\n", TESTS, FAIL),
        (
            "recursion bomb",
            "import sys\nsys.setrecursionlimit(10**8)\ndef f(x):\n    return f(x) + 1\n",
            TESTS,
            FAIL,
        ),
        ("read stdin", "import sys\ndata = sys.stdin.read()\nline = input()\n", TESTS, FAIL),
        ("sys.exit(0) early", "import sys\nsys.exit(0)\n" + WRONG, TESTS, FAIL),
        ("os._exit(0) early", "import os\nos._exit(0)\n", TESTS, FAIL),
        ("SIGKILL self", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", TESTS, FAIL),
        ("print fake results", "print('PASS')\nprint('All tests passed')\n" + WRONG, TESTS, FAIL),
        (
            "write PASS to every fd",
            "import os\nfor fd in range(64):\n    try:\n"
            "        os.write(fd, b'PASS\\n')\n    except OSError:\n        pass\n" + WRONG,
            TESTS,
            FAIL,
        ),
        (
            "override builtins",
            "import builtins\nbuiltins.AssertionError = type('X', (Exception,)"
            ", {})\nbuiltins.abs = lambda x: 0\n__builtins__['abs'] = lambda x: 0\n" + WRONG,
            "assert abs(f(1) - 2) < 1e-9\nassert f(1) == 2",
            FAIL,
        ),
        (
            "always-equal object",
            "class E:\n    def __eq__(self, other):\n        return True\n"
            "def f(x):\n    return E()\n",
            TESTS,
            FAIL,
        ),
        (
            "int subclass that lies",
            "class I(int):\n    __eq__ = lambda s, o: True\ndef f(x):\n    return I(0)\n",
            TESTS,
            FAIL,
        ),
        (
            "patch math under test",
            "import math\ndef f(x):\n    math.isclose = lambda *a, **k: True\n    return 0\n",
            "import math\nassert math.isclose(f(1), 2)",
            FAIL,
        ),
        (
            "frame walk to the harness",
            "import sys\ntry:\n    fr = sys._getframe(1)\n"
            "    fr.f_locals\nexcept Exception:\n    pass\n" + WRONG,
            TESTS,
            FAIL,
        ),
        (
            "traceback frame walk",
            "try:\n    1 / 0\nexcept Exception as e:\n    fr = e.__traceback"
            "__.tb_frame.f_back\n" + WRONG,
            TESTS,
            FAIL,
        ),
        ("gc object walk", "import gc\nobjs = gc.get_objects()\n" + WRONG, TESTS, FAIL),
        ("tracing hook", "import sys\nsys.settrace(lambda *a: None)\n" + WRONG, TESTS, FAIL),
        (
            "audit hook sniffing the tests",
            "import sys\nseen = []\nsys.addaudithook(lambda e, a: seen.append(a))\n" + WRONG,
            TESTS,
            FAIL,
        ),
        (
            "raise the verdict event",
            "import sys\nsys.audit('omnisched.verdict')\n" + WRONG,
            TESTS,
            FAIL,
        ),
        (
            "patch the harness",
            "import sys\nfor name in list(sys.modules):\n    m = sys.modules"
            "[name]\n    if hasattr(m, 'run') and hasattr(m, 'make_guard'):\n        m.run = None\n"
            "sys.audit = lambda *a: None\nimport os\nos._exit = lambda c: None\n" + WRONG,
            TESTS,
            FAIL,
        ),
        (
            "atexit and threads",
            "import atexit, threading\natexit.register(print, 'PASS')\n"
            "threading.Thread(target=lambda: None).start()\n" + WRONG,
            TESTS,
            FAIL,
        ),
        (
            "alarm handler between tests",
            "import signal, math\nsignal.signal(signal.SIGALRM, "
            "lambda *a: setattr(math, 'isclose', lambda *a, **k: True))\nsignal.setitimer("
            "signal.ITIMER_REAL, 0.001)\ndef f(x):\n    return 0\n",
            "import math, time\nf(1)\ntime.sleep(0.05)\nassert math.isclose(f(1), 2)",
            FAIL,
        ),
        (
            "raise rlimits",
            "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (10**6, "
            "10**6))\nwhile True:\n    pass\n",
            TESTS,
            FAIL,
        ),
        ("huge file", "open('big', 'wb').write(b'x' * (64 << 20))\n" + WRONG, TESTS, FAIL),
        ("KeyboardInterrupt", "raise KeyboardInterrupt\n", TESTS, FAIL),
    ]


@pytest.fixture(scope="module", params=["auto", "interpreter"])
def sandbox(request: pytest.FixtureRequest):
    sb = Sandbox(SandboxLimits(timeout_s=2.0, memory_mb=512, isolation=request.param))
    yield sb
    sb.close()


def test_hostile_programs_neither_escape_nor_pass(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMNI_TEST_SECRET", "s3cret")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.05)
    connections: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):  # accept timed out
                connections.append(listener.accept())

    threading.Thread(target=accept, daemon=True).start()
    suite = cases(str(tmp_path), listener.getsockname()[1])
    assert len(suite) >= 25
    problems = []
    try:
        for name, program, tests, expect in suite:
            result = sandbox.run(program, tests)
            if expect == FAIL and result.passed:
                problems.append(f"{name}: false pass")
            if expect == BLOCKED and not result.passed:
                problems.append(f"{name}: not blocked ({result.reason})")
            if os.listdir(tmp_path):
                problems.append(f"{name}: wrote {os.listdir(tmp_path)} on the host")
            after = sandbox.run(*GOOD)
            if not after.passed:
                problems.append(f"{name}: sandbox broken afterwards ({after.reason})")
    finally:
        stop.set()
    assert not connections, "a sandboxed program reached a host socket"
    assert not problems, "\n".join(problems)


def test_failures_say_why(sandbox: Sandbox) -> None:
    assert "timed out" in (sandbox.run("while True: pass", TESTS, timeout=0.5).reason or "")
    assert "exit(0)" in (sandbox.run("import sys\nsys.exit(0)", TESTS).reason or "")
    assert "assert f(1) == 2" in (sandbox.run(WRONG, TESTS).reason or "")
    assert "does not compile" in (sandbox.run("def f(:", TESTS).reason or "")


def test_namespaces_are_used_where_the_kernel_allows(sandbox: Sandbox) -> None:
    sandbox.run(*GOOD)
    if sandbox.limits.isolation == "interpreter":
        assert sandbox.mode == "none"
    elif os.path.exists("/proc/self/ns/net") and os.geteuid() == 0:
        assert sandbox.mode == "root", sandbox.notes
