"""Kernel-level isolation primitives for the sandbox server (Linux, stdlib only).

Loaded by `server.py` inside the sandbox server process (`python -I -S`), never by the trainer.
"""

from __future__ import annotations

import ctypes
import os
import resource

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 0x400, 0x800, 0x200000, 0x1000000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4
# Flags a user namespace may not clear on a remount (the kernel "locks" them): keep them.
_MOUNT_OPTION_FLAGS = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
}
# World-writable places and the user's home get an empty private tmpfs in the sandbox.
HIDDEN_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/var/lock")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 4 + [ctypes.c_void_p]
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), "prctl")


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def enter_server_namespaces(home: str | None, keep: list[str]) -> tuple[str, list[str]]:
    """Move the server into a fresh network + mount namespace (and a user namespace when not
    root), make every mount read-only and hide world-writable dirs and `home` under empty tmpfs;
    `keep` (the interpreter's stdlib dirs) stays visible where it lies under `home`.

    Returns (mode, notes): mode "root" (root: items later drop to an unused uid), "userns"
    (unprivileged user namespace) or "none" (the kernel refused: no kernel isolation of network
    or files; the interpreter-level guard still applies). Notes list partial failures.
    """
    notes: list[str] = []
    uid, gid = os.geteuid(), os.getegid()
    try:
        if uid == 0:
            unshare(CLONE_NEWNS | CLONE_NEWNET)
            mode = "root"
        else:
            unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET)
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"0 {uid} 1")
            _write("/proc/self/gid_map", f"0 {gid} 1")
            mode = "userns"
    except OSError as exc:
        return "none", [f"namespaces unavailable ({exc})"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    notes += _remount_read_only()
    for path in HIDDEN_DIRS:
        notes += _hide(path, "1777")
    if home:
        notes += _hide_keeping(home, keep)
    return mode, notes


def _hide(path: str, perms: str) -> list[str]:
    if not os.path.isdir(path) or os.path.islink(path):
        return []
    try:
        mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"size=16m,mode={perms}")
    except OSError as exc:
        return [f"could not hide {path} ({exc.strerror})"]
    return []


def _hide_keeping(home: str, keep: list[str]) -> list[str]:
    """Hide `home` but bind the `keep` dirs under it back, read-only, at the same paths."""
    home = os.path.realpath(home)
    inside = [k for k in map(os.path.realpath, keep) if k.startswith(home + os.sep)]
    inside = [k for k in inside if os.path.isdir(k)]
    fds = [os.open(k, os.O_PATH | os.O_DIRECTORY) for k in inside]
    try:
        notes = _hide(home, "0755")
        if notes:
            return notes
        for path, fd in zip(inside, fds):
            os.makedirs(path, mode=0o755, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    finally:
        for fd in fds:
            os.close(fd)
    return []


def _mountpoints() -> list[tuple[str, int]]:
    """(mount point, locked per-mount flags) from /proc/self/mountinfo, parents first."""
    out = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")
            flags = 0
            for opt in fields[5].split(","):
                flags |= _MOUNT_OPTION_FLAGS.get(opt, 0)
            out.append((point, flags))
    return sorted(out, key=lambda p: p[0].count("/"))


def _remount_read_only() -> list[str]:
    notes = []
    for point, flags in _mountpoints():
        try:
            mount(None, point, None, MS_BIND | MS_REMOUNT | MS_RDONLY | flags)
        except OSError as exc:
            notes.append(f"{point} stays writable ({exc.strerror})")
    return notes


def enter_item_namespaces() -> None:
    """Per item, in the forked child: a private mount namespace (fresh /tmp) and a fresh PID
    namespace, so the next fork is PID 1 there and its death kills every process it started."""
    unshare(CLONE_NEWNS | CLONE_NEWPID)


def prepare_item_filesystem(workdir: str) -> None:
    """In PID 1 of the item's namespaces: an empty tmpfs as working dir and over /proc."""
    mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=0700")
    mount("tmpfs", "/proc", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "size=4k")


def drop_privileges(uid: int, workdir: str) -> None:
    """Root mode: become an otherwise unused uid/gid with no supplementary groups."""
    os.chown(workdir, uid, uid)
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def apply_rlimits(cpu_s: int, memory_bytes: int, file_bytes: int, nproc: int, nofile: int) -> None:
    for res, value in (
        (resource.RLIMIT_CPU, cpu_s),
        (resource.RLIMIT_AS, memory_bytes),
        (resource.RLIMIT_FSIZE, file_bytes),
        (resource.RLIMIT_NPROC, nproc),
        (resource.RLIMIT_NOFILE, nofile),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(res, (value, value))
