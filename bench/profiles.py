"""Profile a benchmark command with py-spy (every process of the tree, Ray actors included) and
summarise where the CPU time went: by process, by function (self time) and by function
including callees.

    .venv/bin/python bench/profiles.py --name e2e -- .venv/bin/python bench/bench_e2e.py --quick

Writes bench/results/profile_<name>.json (and the raw py-spy stacks beside it) and prints the
summary. `bench/run_all.py` calls it for every missed target.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, ROOT, write_json

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
PROCESS = re.compile(r'^process \d+:"(?P<cmd>.*)"$')
COUNT = re.compile(r" \d+$")
ACTORS = {"RolloutWorker", "LearnerWorker", "RewardWorker", "SchedulerService"}


def py_spy() -> str | None:
    """The py-spy executable beside this interpreter, else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def record(cmd: list[str], raw: Path, rate: int = 50, timeout: float = 900) -> int:
    """Run `cmd` under `py-spy record` (raw collapsed stacks to `raw`); its return code."""
    exe = py_spy()
    if exe is None:
        raise FileNotFoundError("py-spy is not installed (pip install py-spy)")
    raw.parent.mkdir(parents=True, exist_ok=True)
    spy = [exe, "record", "--format", "raw", "--rate", str(rate), "--subprocesses"]
    spy += ["--nonblocking", "-o", str(raw), "--", *cmd]
    proc = subprocess.run(spy, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
    return proc.returncode


def frame_name(frame: str) -> tuple[str, str]:
    """`func (path/to/file.py:12)` -> (`func (file.py)`, the package the file belongs to)."""
    m = FRAME.match(frame)
    if not m:
        return frame, "?"
    return f"{m['func']} ({Path(m['file']).name})", package(m["file"])


def package(path: str) -> str:
    """The library a frame's file belongs to. py-spy writes paths relative to the sys.path
    entry they were found under (`torch/nn/modules/linear.py`, `dataclasses.py`)."""
    if path.startswith("<frozen"):
        return "importlib"
    parts = Path(path).parts
    if not Path(path).is_absolute():
        top = parts[0].removesuffix(".py")
        return "python" if len(parts) == 1 or top in sys.stdlib_module_names else top
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            rest = parts[parts.index(marker) + 1 :]
            return rest[0].removesuffix(".py") if rest else "?"
    try:
        return Path(path).resolve().relative_to(ROOT).parts[0]
    except ValueError:
        return "python"


def process_name(frame: str) -> str:
    """`process 12:"python -m omnisched.cli run ..."` -> a short name: the module of `-m`, the
    script, or the executable."""
    m = PROCESS.match(frame)
    if not m:
        return "?"
    words = m["cmd"].split()
    if not words:  # py-spy could not read the command line (the process was exiting)
        return "?"
    if "-m" in words[:-1]:
        return words[words.index("-m") + 1]
    if "multiprocessing.forkserver" in m["cmd"]:
        return "forkserver child (verifier / sandbox)"
    script = next((w for w in words[1:] if w.endswith(".py")), None) or words[0]
    return f"ray {Path(script).name}" if "/ray/" in script else Path(script).name


def actor_name(frames: list[tuple[str, str]]) -> str | None:
    """`ray::RolloutWorker` when the stack runs a method of one of omnisched's actors."""
    for func, _ in frames:
        cls = func.split(".")[0]
        if cls in ACTORS:
            return f"ray::{cls}"
    return None


Stack = tuple[str, list[tuple[str, str]], int]  # process, (function, package) root->leaf, samples
NOISE = ("importlib", "python", "?")  # interpreter and stdlib frames: not in the inclusive view


def stack_lines(lines: list[str]) -> list[str]:
    """Raw lines re-joined where a process's command line held newlines (`python -c ...`)."""
    out, part = [], ""
    for line in lines:
        part += line
        if COUNT.search(part):
            out.append(part)
            part = ""
        else:
            part += " "
    return out


def split_frames(stack: str) -> list[str]:
    """`a;b;c` -> frames, keeping a quoted process command line that holds `;` in one piece."""
    out: list[str] = []
    for piece in stack.split(";"):
        if out and out[-1].startswith("process ") and not out[-1].endswith('"'):
            out[-1] += ";" + piece
        else:
            out.append(piece)
    return out


def parse(lines: list[str]) -> list[Stack]:
    """One Stack per collapsed stack line. With --subprocesses a child's stack is nested under
    its ancestors' `process ...` frames: the last one names it (or the omnisched actor whose
    method is on the stack: Ray workers all share one command line)."""
    out = []
    for line in stack_lines(lines):
        stack, _, count = line.rstrip().rpartition(" ")
        proc, frames = "main", []
        for frame in split_frames(stack):
            if frame.startswith("process "):
                proc = process_name(frame)
            else:
                frames.append(frame_name(frame))
        out.append((actor_name(frames) or proc, frames, int(count)))
    return out


def summarise(stacks: list[Stack], top: int = 12) -> dict[str, Any]:
    """Shares of all samples: per process, per package and per function of the running frame
    (self time), and per library function including its callees (stdlib and imports left out)."""
    total = sum(n for _, _, n in stacks) or 1
    counters: dict[str, Counter[str]] = {
        k: Counter() for k in ("by_process", "by_package", "self", "inclusive")
    }
    for proc, frames, n in stacks:
        counters["by_process"][proc] += n
        if frames:
            counters["self"][frames[-1][0]] += n
            counters["by_package"][frames[-1][1]] += n
        for name in {f for f, pkg in frames if pkg not in NOISE and not f.startswith("<module>")}:
            counters["inclusive"][name] += n
    shares = {
        k: [[name, round(n / total, 4)] for name, n in c.most_common(top)]
        for k, c in counters.items()
    }
    return {"samples": total, **shares}


def render(name: str, summary: dict[str, Any], rows: int = 8) -> str:
    lines = [f"profile of {name} ({summary['samples']} samples):"]
    titles = {
        "by_process": "processes",
        "by_package": "self time by package",
        "self": "self time",
        "inclusive": "incl. callees",
    }
    for key, title in titles.items():
        lines.append(f"  {title}:")
        lines += [f"    {share:6.1%}  {fn}" for fn, share in summary[key][:rows]]
    return "\n".join(lines)


def profile(name: str, cmd: list[str], out_dir: Path = RESULTS) -> dict[str, Any]:
    """Record `cmd`, write profile_<name>.json beside the raw stacks, return the summary."""
    raw = out_dir / f"profile_{name}.txt"
    rc = record(cmd, raw)
    stacks = parse(raw.read_text().splitlines()) if raw.is_file() else []
    summary = {"name": name, "command": " ".join(cmd), "returncode": rc, **summarise(stacks)}
    write_json(out_dir / f"profile_{name}.json", summary)
    print(render(name, summary), flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    profile(args.name, cmd, args.out_dir)


if __name__ == "__main__":
    main()
