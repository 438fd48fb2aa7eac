"""Runs one untrusted program and its tests in the sandbox child; only finished tests say PASS.

Stdlib only: runs inside the sandbox server's forked child (`python -I -S`), after isolation.

Why the verdict cannot be forged:
- The verdict travels on a private pipe, never as the exit code or on stdout, so `sys.exit(0)`,
  `os._exit(0)` or printing "passed" before the tests leave no verdict and count as a failure.
- A PASS line carries a per-item random nonce that lives only in this audit hook's closure.
  The hook writes it when the event `omnisched.verdict` is raised from a frame running the
  tests' own code object, which is the statement appended after the last test; so the tests
  must have run to their end. A program that reaches that event from its own code gets nothing.
- The audit hook (it cannot be removed) blocks what would reach the nonce or the tests: frame
  and traceback-frame access, tracing and profiling, `gc` object walks, `ctypes`, new audit
  hooks; and what could harm the host: fork/exec/subprocess, signals to other processes,
  sockets, rlimit changes, opening files outside the work dir and the stdlib (writes only in
  the work dir).
- The tests run with a pristine copy of the builtins, with module dicts, `sys.modules` and the
  import machinery restored to their state before the program ran, and call the program's
  functions through a wrapper that fails results of classes the program defined (the
  "always-equal object" reward hack).
"""

from __future__ import annotations

import _thread
import builtins
import contextlib
import gc
import os
import posix
import signal
import stat
import sys

VERDICT_EVENT = "omnisched.verdict"
TESTS_NAME = "<tests>"
BLOCKED_EVENTS = frozenset(
    {
        "sys._getframe",
        "sys._current_frames",
        "sys._current_exceptions",
        "sys.settrace",
        "sys.setprofile",
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
        "os.fork",
        "os.forkpty",
        "os.posix_spawn",
        "os.spawn",
        "os.exec",
        "os.system",
        "os.startfile",
        "subprocess.Popen",
        "os.kill",
        "os.killpg",
        "signal.pthread_kill",
        "resource.setrlimit",
        "resource.prlimit",
        "socket.__new__",
        "socket.bind",
        "socket.connect",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.sendto",
        "socket.sendmsg",
        "os.setuid",
        "os.setgid",
        "sys.monitoring.register_callback",
        "os.pidfd_open",
        "_thread.start_new_thread",
    }
)
BLOCKED_IMPORTS = frozenset(
    {
        "ctypes",
        "_ctypes",
        "_posixsubprocess",
        "_testcapi",
        "_testinternalcapi",
        "_xxsubinterpreters",
        "_xxinterpchannels",
        "_sqlite3",
        "_dbm",
        "_gdbm",
    }
)
FRAME_ATTRIBUTES = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"})
PATH_EVENTS = {  # event -> indexes of path arguments it writes
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.mkdir": (0,),
    "os.rename": (0, 1),
    "os.link": (0, 1),
    "os.symlink": (1,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.truncate": (0,),
    "os.utime": (0,),
    "os.mkfifo": (0,),
    "os.mknod": (0,),
    "sqlite3.connect": (0,),
    "shutil.copyfile": (1,),
}
DEVICES = frozenset({"/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"})
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _realpath(path: str, cwd: str) -> str:
    """Symlink-resolving absolute path built from C functions the program cannot patch."""
    readlink, lstat, s_islnk = posix.readlink, posix.lstat, stat.S_ISLNK
    parts = (path if path.startswith("/") else cwd + "/" + path).split("/")
    out: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            out = out[:-1]
            continue
        candidate = "/" + "/".join([*out, part])
        try:
            is_link = s_islnk(lstat(candidate).st_mode)
        except OSError:
            is_link = False
        if is_link and hops < 40:
            hops += 1
            target = readlink(candidate)
            if target.startswith("/"):
                out = []
            parts = target.split("/") + parts
        else:
            out.append(part)
    return "/" + "/".join(out)


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def make_guard(nonce: bytes, verdict_fd: int, workdir: str, read_roots: tuple[str, ...]):
    """The audit hook and the setter the harness uses to name the tests' code object."""
    write, getcwd, fsdecode, get_ident = posix.write, posix.getcwd, os.fsdecode, _thread.get_ident
    getframe = sys._getframe
    state = {"tests_code": None, "trusted": None, "sent": False}

    def check_path(path: object, writing: bool) -> None:
        if isinstance(path, int) or path is None:
            return
        real = _realpath(fsdecode(path), getcwd())
        if _under(real, (workdir,)) or (real in DEVICES and (not writing or real == "/dev/null")):
            return
        if writing or not _under(real, read_roots):
            verb = "writing" if writing else "reading"
            raise PermissionError(f"sandbox: {verb} {real} is not allowed")

    def check_verdict() -> None:
        state["trusted"] = get_ident()
        try:
            caller = getframe(2).f_code
        finally:
            state["trusted"] = None
        if caller is state["tests_code"] and not state["sent"]:
            state["sent"] = True
            write(verdict_fd, nonce + b" PASS\n")

    def hook(event: str, args: tuple) -> None:
        if state["trusted"] is not None and state["trusted"] == get_ident():
            return
        if event == VERDICT_EVENT:
            check_verdict()
        elif event in BLOCKED_EVENTS or event.startswith("ctypes."):
            exc = ValueError if event == "sys._getframe" else PermissionError
            raise exc(f"sandbox: {event} is not allowed")
        elif event == "sys.addaudithook":
            raise RuntimeError("sandbox: adding audit hooks is not allowed")
        elif event == "object.__getattr__" and args[1] in FRAME_ATTRIBUTES:
            raise AttributeError(f"sandbox: reading .{args[1]} is not allowed")
        elif event == "import" and args[0].partition(".")[0] in BLOCKED_IMPORTS:
            raise ImportError(f"sandbox: importing {args[0]} is not allowed")
        elif event == "open":
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            writing = bool(set(mode or "") & set("wax+")) or bool((flags or 0) & WRITE_FLAGS)
            check_path(args[0], writing)
        elif event in ("os.listdir", "os.scandir"):
            check_path(args[0] if args and args[0] is not None else ".", False)
        elif event in PATH_EVENTS:
            for i in PATH_EVENTS[event]:
                if i < len(args):
                    check_path(args[i], True)

    def set_tests_code(code: object) -> None:
        state["tests_code"] = code

    def tests_line(tb: object) -> int | None:
        """Deepest line of the tests in a traceback (attribute reads only: no program code)."""
        state["trusted"] = get_ident()
        line = None
        try:
            while tb is not None:
                if tb.tb_frame.f_code.co_filename == TESTS_NAME:
                    line = tb.tb_lineno
                tb = tb.tb_next
        finally:
            state["trusted"] = None
        return line

    return hook, set_tests_code, tests_line


def _snapshot() -> dict:
    return {
        "builtins": dict(vars(builtins)),
        "modules": {name: (m, dict(vars(m))) for name, m in list(sys.modules.items())},
        "meta_path": list(sys.meta_path),
        "path_hooks": list(sys.path_hooks),
        "path": list(sys.path),
        "classes": _all_classes(),
    }


def _all_classes() -> set[int]:
    seen: set[int] = set()
    todo = [object]
    while todo:
        cls = todo.pop()
        if id(cls) in seen:
            continue
        seen.add(id(cls))
        with contextlib.suppress(TypeError):  # `type` itself needs an argument
            todo.extend(type.__subclasses__(cls))
    return seen


def _restore(snap: dict) -> None:
    """Undo the program's changes to modules and the import machinery before the tests run."""
    for name in [n for n in sys.modules if n not in snap["modules"]]:
        del sys.modules[name]
    for name, (module, saved) in snap["modules"].items():
        sys.modules[name] = module
        current = vars(module)
        if name != "sys" and not _same(saved, current):
            current.clear()
            current.update(saved)
    sys.meta_path[:] = snap["meta_path"]
    sys.path_hooks[:] = snap["path_hooks"]
    sys.path[:] = snap["path"]
    sys.path_importer_cache.clear()


def _honest(value: object, known: set[int], *, _id=id, _type=type, _list=list) -> bool:
    """False if `value` (or an item of a container in it) is of a class the program created."""
    todo, budget = [value], 100_000
    while todo and budget > 0:
        budget -= 1
        item = todo.pop()
        kind = _type(item)
        if not all(_id(c) in known for c in kind.__mro__):
            return False
        if kind in (list, tuple, set, frozenset):
            todo.extend(_list(item))
        elif kind is dict:
            todo.extend(_list(item.keys()) + _list(item.values()))
    return True


def _quiet(disable_gc=gc.disable, alarm=signal.alarm, setitimer=signal.setitimer) -> None:
    """Stop program code from running between test statements: no GC finalizers, no timers."""
    disable_gc()
    alarm(0)
    for timer in (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF):
        setitimer(timer, 0)


def _tampered(
    tests_ns: dict, snap: dict, *, _vars=vars, _dict=dict, _type=type, _list=list
) -> str | None:
    """Name of a module the tests use whose attributes changed since the program was loaded."""
    mods = [builtins, *(v for v in _list(tests_ns.values()) if _type(v) is _type(builtins))]
    for module in mods:
        name = _vars(module).get("__name__", "?")
        saved = snap["modules"].setdefault(name, (module, _dict(_vars(module))))[1]
        if not _same(saved, _vars(module)):
            return name
    return None


def _same(a: dict, b: dict, *, _len=len) -> bool:
    """Identity-wise equality of two namespaces (values' own __eq__ could lie)."""
    missing = object()
    return _len(a) == _len(b) and all(b.get(k, missing) is v for k, v in a.items())


def _checked(fn, known: set[int], tests_ns: dict, snap: dict):
    """`fn` as the tests see it; the checks are bound now, so patching this module is useless."""
    quiet, honest, tampered = _quiet, _honest, _tampered

    def call(*args, **kwargs):
        result = fn(*args, **kwargs)
        quiet()
        if not honest(result, known):
            raise TypeError(f"{fn.__name__} returned an object of a class the program defined")
        changed = tampered(tests_ns, snap)
        if changed:
            raise TypeError(f"{fn.__name__} modified module {changed} under test")
        return result

    call.__name__ = fn.__name__
    call.__doc__ = fn.__doc__
    return call


def _fail(fd: int, nonce: bytes, reason: str) -> None:
    line = " ".join(reason.split())[:300]
    posix.write(fd, nonce + b" FAIL " + line.encode("utf-8", "replace") + b"\n")


def _describe(exc: BaseException, where: str) -> str:
    try:
        text = str(exc)
    except BaseException:
        text = ""
    kind = type(exc).__name__ if isinstance(type(exc).__name__, str) else "exception"
    if isinstance(exc, SystemExit):
        return f"{where} called exit({exc.code!r}) before the tests finished"
    return f"{where} raised {kind}" + (f": {text}" if text else "")


def run(
    program: str,
    tests: str,
    verdict_fd: int,
    nonce: bytes,
    workdir: str,
    read_roots: tuple[str, ...],
) -> None:
    """Execute `program`, then `tests` against it; always ends the process."""
    exit_now = os._exit
    try:
        prog_code = compile(program, "<completion>", "exec")
    except (SyntaxError, ValueError) as exc:
        _fail(verdict_fd, nonce, f"program does not compile: {exc}")
        exit_now(0)
    snap = _snapshot()
    hook, set_tests_code, tests_line = make_guard(nonce, verdict_fd, workdir, read_roots)
    sys.addaudithook(hook)
    del hook
    prog_ns = {"__name__": "solution", "__builtins__": dict(snap["builtins"])}
    try:
        exec(prog_code, prog_ns)
    except BaseException as exc:
        _fail(verdict_fd, nonce, _describe(exc, "program"))
        exit_now(0)
    _restore(snap)
    tests_ns: dict = {"__name__": "tests", "__builtins__": dict(snap["builtins"])}
    for name, value in list(prog_ns.items()):
        if not name.startswith("__"):
            is_own_fn = type(value) is type(_restore) and value.__globals__ is prog_ns
            tests_ns[name] = (
                _checked(value, snap["classes"], tests_ns, snap) if is_own_fn else value
            )
    tests_ns["_omnisched_audit"] = sys.audit
    try:
        code = compile(tests + f"\n_omnisched_audit({VERDICT_EVENT!r})\n", TESTS_NAME, "exec")
    except SyntaxError as exc:
        _fail(verdict_fd, nonce, f"tests do not compile: {exc}")
        exit_now(0)
    set_tests_code(code)
    _quiet()
    try:
        exec(code, tests_ns)
    except BaseException as exc:
        line = tests_line(exc.__traceback__)
        where = f"tests line {line}" if line else "tests"
        if type(exc) is AssertionError:
            source = tests.splitlines()[line - 1].strip() if line else ""
            _fail(verdict_fd, nonce, f"failed at {where}: {source}")
        else:
            _fail(verdict_fd, nonce, _describe(exc, f"program under test (at {where})"))
    exit_now(0)
