"""Run a command and report its wall time and the peak total RSS of its whole process tree.

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


def tree_rss(root: psutil.Process) -> int:
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, tree_rss(root))
        except psutil.NoSuchProcess:
            break
        time.sleep(args.interval)
    wall = time.perf_counter() - t0
    result = {
        "cmd": " ".join(cmd),
        "returncode": proc.returncode,
        "wall_s": round(wall, 1),
        "peak_tree_rss_gib": round(peak / 2**30, 3),
    }
    print(json.dumps(result), file=sys.stderr)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
