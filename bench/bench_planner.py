"""Scheduling policies on simulated worlds where the truth is known (omnisched.simulate).

    .venv/bin/python bench/bench_planner.py [--quick | --smoke] [--worlds N] [--arms a,b,...]

Every policy is driven through the real SchedulerService as the controller drives it, at equal
compute (probe phases paid from the regular phases), on worlds of 3-6 domains with 128-item
evaluations (avg@4). Figures, each a mean over worlds with a bootstrap 95% CI, in points of
mean accuracy: regret to the best order; regret / a random order's (target <= 0.5 for bwt);
regret - the uniform mixture's (target <= 0 for the online policies); the same on the worlds
where training structured domains first is wrong; the planner's prediction error (MAE of the
predicted final accuracies, per decision) and its rank agreement with the truth across orders.
Full: 500 worlds; --quick 120; --smoke 12.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Figure, add_common_args, by_mode, write_result

from omnisched.simulate.run import ONLINE, PHASED, run_arena, table


def figures(summary: Any) -> list[Figure]:
    out: list[Figure] = []
    for arm, (mean, lo, hi) in summary.regret.items():
        out.append(Figure(f"regret {arm}", mean, "points", higher_is_better=False,
                          note=f"95% CI [{lo:.2f}, {hi:.2f}]"))  # fmt: skip
    for arm, (mean, lo, hi) in summary.ratio_to_random.items():
        target = 0.5 if arm in PHASED else None
        out.append(Figure(f"regret / random order, {arm}", mean, "x", target=target,
                          higher_is_better=False, note=f"95% CI [{lo:.2f}, {hi:.2f}]"))  # fmt: skip
    for arm, (mean, lo, hi) in summary.vs_uniform.items():
        target = 0.0 if arm in ONLINE else None
        out.append(Figure(f"regret - uniform mixture's, {arm}", mean, "points", target=target,
                          higher_is_better=False, note=f"95% CI [{lo:.2f}, {hi:.2f}]"))  # fmt: skip
    for arm, per_plan in summary.rank_corr.items():
        for i, (mean, lo, hi) in enumerate(per_plan):
            out.append(Figure(f"predicted vs true order ranks (Spearman), {arm}, plan {i + 1}",
                              mean, "rho", note=f"95% CI [{lo:.2f}, {hi:.2f}]"))  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--worlds", type=int, default=None)
    parser.add_argument("--arms", default=None, help="comma-separated arm names")
    args = parser.parse_args()
    worlds = args.worlds or by_mode(args, 500, 120, 12)
    arms = args.arms.split(",") if args.arms else None
    summary, _, used = run_arena(worlds, arms, processes=args.threads)
    print(table(summary), flush=True)
    details = {
        "summary": summary.to_json(),
        "arms": [vars(a) for a in used],
        "worlds_where_structured_first_is_wrong": summary.structured_first_wrong,
    }
    settings = {"worlds": worlds, "arms": [a.name for a in used], "eval_items": 128}
    write_result("planner", args, figures(summary), details, settings=settings)


if __name__ == "__main__":
    main()
