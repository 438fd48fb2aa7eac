"""The whole benchmark suite, one command: every benchmark in its own process, then one table of
our figures beside the peers' figures from the same run, as ratios, against the targets.

    .venv/bin/python bench/run_all.py            # full: about 15 min on 2 cores
    .venv/bin/python bench/run_all.py --quick    # smaller settings, vLLM skipped: about 4 min
        [--only e2e,learner] [--skip scaling] [--vllm auto|on|off] [--[no-]profile] [--threads 2]

Order: the shared bench model (bench/models.py, cached), rewards, learner, rollout (HF, then
vLLM when this interpreter imports it, else under .venv-vllm/bin/python if that exists), e2e
vs TRL, scheduler, scaling. Each writes bench/results/<name>.json and its output to
bench/results/logs/<name>.log. In full mode every benchmark with a missed target is then
profiled with py-spy (its quick mode, our side only) and summarised in
bench/results/profile_<name>.json. Writes bench/results/summary.json (machine, settings, every
figure, missed targets with their profiles) and prints the table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, ROOT, Figure, figure_from_json, fmt, machine_info, write_json

BENCH = ROOT / "bench"


def vllm_python() -> Path:
    """The interpreter with vLLM: this one when it can import vllm (the README's test install
    has it), else .venv-vllm's (the README's vLLM section), which may not exist."""
    if importlib.util.find_spec("vllm") is not None:
        return Path(sys.executable)
    return ROOT / ".venv-vllm" / "bin" / "python"


VLLM_PYTHON = vllm_python()


@dataclass
class Bench:
    name: str
    script: str
    args: list[str] = field(default_factory=list)
    python: str = sys.executable
    needs_model: bool = False
    profile_args: list[str] = field(default_factory=list)  # our side only, for py-spy
    skipped: str | None = None


def suite(args: argparse.Namespace) -> list[Bench]:
    vllm = Bench(
        "rollout_vllm",
        "bench_rollout_overhead.py",
        ["--backend", "vllm"],
        python=str(VLLM_PYTHON),
        profile_args=["--backend", "vllm"],
    )
    if args.vllm == "off" or (args.vllm == "auto" and (args.quick or args.smoke)):
        vllm.skipped = "vLLM engine start (25-35 s) left out of --quick and --smoke (--vllm on)"
    elif not VLLM_PYTHON.is_file():
        vllm.skipped = f"no vLLM environment ({VLLM_PYTHON.relative_to(ROOT)} not found)"
    benches = [
        Bench("rewards", "bench_rewards.py"),
        Bench("learner", "bench_learner.py"),
        Bench(
            "rollout_hf",
            "bench_rollout_overhead.py",
            ["--backend", "hf"],
            profile_args=["--backend", "hf"],
        ),
        vllm,
        Bench("e2e", "bench_e2e.py", needs_model=True, profile_args=["--side", "ours"]),
        # its own model: the recipe's warm start in full mode (bench_scheduler.py)
        Bench("scheduler", "bench_scheduler.py", profile_args=["--domains", "4"]),
        Bench("scaling", "bench_scaling.py"),
    ]
    only = set(args.only.split(",")) if args.only else None
    skip = set(args.skip.split(",")) if args.skip else set()
    return [b for b in benches if (only is None or b.name in only) and b.name not in skip]


def mode_flags(args: argparse.Namespace) -> list[str]:
    return ["--smoke"] if args.smoke else ["--quick"] if args.quick else []


def prepare_model(args: argparse.Namespace, log_dir: Path) -> str:
    """Build (or find in the cache) the shared SFT bench model; returns its folder."""
    cmd = [sys.executable, str(BENCH / "models.py"), "--threads", str(args.threads)]
    cmd += ["--smoke"] if args.smoke else []
    with (log_dir / "models.log").open("w") as log:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"bench model preparation failed: see {log_dir / 'models.log'}")
    return proc.stdout.strip().splitlines()[-1]


def run_bench(b: Bench, args: argparse.Namespace, model: str, log_dir: Path) -> dict[str, Any]:
    """Run one benchmark, streaming its stdout; stderr goes to its log file only."""
    cmd = [b.python, str(BENCH / b.script), *b.args, *mode_flags(args)]
    cmd += ["--threads", str(args.threads), "--out-dir", str(args.out_dir)]
    cmd += ["--model", model] if b.needs_model else []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    print(f"\n== {b.name}: {' '.join(Path(c).name if c == b.python else c for c in cmd)}")
    start = time.perf_counter()
    log_path = log_dir / f"{b.name}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT, env=env
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            print(f"   {line}", end="", flush=True)
            log.write(line)
        proc.wait()
    wall = time.perf_counter() - start
    status = {"returncode": proc.returncode, "wall_s": round(wall, 1), "log": str(log_path)}
    if proc.returncode != 0:
        tail = log_path.read_text()[-1500:]
        print(f"   FAILED ({proc.returncode}) after {wall:.0f} s; log tail:\n{tail}", flush=True)
    return status


def load_figures(name: str, out_dir: Path, since: float) -> tuple[list[Figure], dict | None]:
    """Figures of `<name>.json` when this run wrote it (not a stale file of an earlier run)."""
    path = out_dir / f"{name}.json"
    if not path.is_file() or path.stat().st_mtime < since:
        return [], None
    data = json.loads(path.read_text())
    return [figure_from_json(f) for f in data["figures"]], data


def table(rows: list[tuple[str, Figure]]) -> str:
    head = ("benchmark", "figure", "ours", "peer", "ratio", "target", "met")
    body = [
        (
            name,
            f.name + (f" [{f.unit}]" if f.unit else ""),
            fmt(f.ours),
            fmt(f.peer),
            fmt(f.ratio),
            f.target_text(),
            {True: "yes", False: "NO", None: "-"}[f.met],
        )
        for name, f in rows
    ]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def profile_missed(
    missed: list[tuple[str, Figure]],
    benches: dict[str, Bench],
    args: argparse.Namespace,
    model: str,
) -> dict[str, Any]:
    """py-spy each benchmark with a missed target once, in its quick mode, our side only."""
    from profiles import profile

    out: dict[str, Any] = {}
    for name in dict.fromkeys(n for n, _ in missed):
        b = benches[name]
        cmd = [
            b.python,
            str(BENCH / b.script),
            *b.profile_args,
            "--smoke" if args.smoke else "--quick",
        ]
        cmd += ["--threads", str(args.threads), "--out-dir", str(args.out_dir / "profile_runs")]
        cmd += ["--model", model] if b.needs_model else []
        print(f"\n== profiling {name} (py-spy): {' '.join(cmd[1:])}", flush=True)
        try:
            out[name] = profile(name, cmd, args.out_dir)
        except (OSError, subprocess.SubprocessError) as exc:
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"   profile failed: {exc}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiniest settings (checks the suite)")
    parser.add_argument("--only", help="comma-separated benchmark names")
    parser.add_argument("--skip", help="comma-separated benchmark names")
    parser.add_argument("--vllm", choices=("auto", "on", "off"), default="auto")
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="py-spy each benchmark with a missed target (default: on in full mode only)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    since, start = time.time(), time.perf_counter()
    log_dir = args.out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    benches = suite(args)
    model = prepare_model(args, log_dir) if any(b.needs_model for b in benches) else ""
    statuses: dict[str, Any] = {}
    rows: list[tuple[str, Figure]] = []
    for b in benches:
        if b.skipped:
            print(f"\n== {b.name}: skipped ({b.skipped})")
            statuses[b.name] = {"skipped": b.skipped}
            continue
        statuses[b.name] = run_bench(b, args, model, log_dir)
        figs, data = load_figures(b.name, args.out_dir, since)
        if data and data["details"].get("skipped"):
            statuses[b.name]["skipped"] = data["details"]["skipped"]
        rows += [(b.name, f) for f in figs]
    missed = [(n, f) for n, f in rows if f.met is False]
    profiles = {}
    if args.profile is None:
        args.profile = not (args.quick or args.smoke)
    if missed and args.profile:
        profiles = profile_missed(missed, {b.name: b for b in benches}, args, model)
    wall = time.perf_counter() - start
    print("\n" + table(rows))
    print(f"\nsuite wall time {wall / 60:.1f} min; results in {args.out_dir}")
    for name, f in missed:
        print(f"MISSED: {name}: {f.line()}")
    summary = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "mode": "smoke" if args.smoke else "quick" if args.quick else "full",
        "machine": machine_info(args.threads),
        "wall_s": round(wall, 1),
        "model": model,
        "benchmarks": statuses,
        "figures": [{"benchmark": n, **f.to_json()} for n, f in rows],
        "missed": [{"benchmark": n, "figure": f.name, "line": f.line()} for n, f in missed],
        "profiles": profiles,
    }
    write_json(args.out_dir / "summary.json", summary)
    failed = [n for n, s in statuses.items() if s.get("returncode", 0) != 0]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
