"""Run a command and report its wall time and the peak memory of its whole process tree.

Ray starts workers as separate processes (some outside the command's children, under the raylet,
which is itself a descendant), so the tree is walked every `--interval` seconds.

    python bench/peak_rss.py -- omnisched run recipes/tiny.yaml
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import psutil


def tree_memory(root: psutil.Process) -> tuple[int, int, dict[str, int]]:
    """(sum of RSS, sum of PSS, PSS by process name) over the tree. RSS counts pages shared
    between forked workers once per process; PSS splits them, so its sum is the real use."""
    rss = pss = 0
    by_name: dict[str, int] = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
            name = proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += info.pss
        by_name[name] = by_name.get(name, 0) + info.pss
    return rss, pss, by_name


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    root = psutil.Process(proc.pid)
    peak_rss = peak_pss = 0
    at_peak: dict[str, int] = {}
    while proc.poll() is None:
        try:
            rss, pss, by_name = tree_memory(root)
        except psutil.NoSuchProcess:
            break
        peak_rss = max(peak_rss, rss)
        if pss > peak_pss:
            peak_pss, at_peak = pss, by_name
        time.sleep(args.interval)
    wall = time.perf_counter() - t0
    gib = 2**30
    result = {
        "cmd": " ".join(cmd),
        "returncode": proc.returncode,
        "wall_s": round(wall, 1),
        "peak_tree_pss_gib": round(peak_pss / gib, 3),
        "peak_tree_rss_sum_gib": round(peak_rss / gib, 3),
        "pss_by_process_at_peak_mib": {
            k: round(v / 2**20) for k, v in sorted(at_peak.items(), key=lambda kv: -kv[1])
        },
    }
    print(json.dumps(result), file=sys.stderr)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
