"""Scheduler overhead: the time the between-phase evaluations take, as a share of the run, and
how it grows with the number of domains.

    .venv/bin/python bench/bench_scheduler.py [--quick | --smoke] [--domains 1,2,4]
        [--scale 1] [--threads 2] [--model DIR]

Real `omnisched run`s (local Ray, the BWT policy) of recipes/tiny.yaml on its first D domains
(math, code, qa, creative), one phase per domain. Full mode runs the recipe at its own scale
(`--scale 1`: 30 steps per phase, eval_size 128/128/128/32, eval.samples 4, G 8, 16 prompts per
step, 40 new tokens) from the recipe's own warm start (bench/models.py `recipe_model`: the model
`omnisched run recipes/tiny.yaml` trains RL from). --quick and --smoke shrink the run by k (10,
30: steps and eval sizes / k) and start from the brief bench SFT model (`sft`); the shrunk
runs keep the eval/train work ratio but not the per-call fixed costs, so their shares are
higher (k 3 gave 22% at 4 domains where the recipe's scale gives ~12%).
Every evaluation (the baseline and one after each phase) scores all D domains, so evaluation
work grows as D(D+1) while training grows as D.
From the run's `kind: timing` row: eval_s (all scheduler evaluations), train_s (all GRPO steps),
wall_s (the whole run: Ray start, actors, evaluations, steps, checkpoints, report; the warm
start is cached before the run).
Figures per D: the evaluations between phases (one after each phase) / run wall time, the
issue's definition, with the target (<= 15%) on the largest D (the tiny recipe has 4 domains);
the same / (eval + train), which leaves out start-up; all evaluations (+ the baseline, which
also pays the actors' first generate and the reward pool's start) / (eval + train); and the
growth of the between-phase share from 1 domain to the largest D. Peak memory of each run's
process tree.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Figure, add_common_args, by_mode, mode, write_result
from loop import recipe_data, run_cli, timing_row

from omnisched.metrics.logger import read_metrics

ORDER = ("math", "code", "qa", "creative")
RECIPE_STEPS = 30  # recipes/tiny.yaml schedule.steps_per_phase
TARGET = 0.15


def settings(args: argparse.Namespace) -> dict[str, Any]:
    counts = args.domains or by_mode(args, "1,2,4", "1,4", "1")
    return {
        "domain_counts": [int(x) for x in counts.split(",")],
        "scale": args.scale or by_mode(args, 1, 10, 30),
        "group_size": 2 if args.smoke else 8,
        "prompts": 2 if args.smoke else 16,
        "new_tokens": 8 if args.smoke else 40,
        "eval_samples": 1 if args.smoke else 4,
        "threads": args.threads,
    }


def one_run(model: Path, count: int, s: dict[str, Any], workdir: Path) -> dict[str, Any]:
    from models import tiny_recipe

    domains = ORDER[:count]
    k = s["scale"]
    sizes = {d.name: max(1, round(d.eval_size / k)) for d in tiny_recipe().domains}
    steps = max(1, round(RECIPE_STEPS / k))
    data = recipe_data(
        model,
        domains,
        group_size=s["group_size"],
        prompts=s["prompts"],
        new_tokens=s["new_tokens"],
        steps_per_phase=steps,
        threads=s["threads"],
        eval_sizes=sizes,
        name=f"bench-sched-{count}",
        policy="bwt",  # the recipe's policy, with its default probes (each one more evaluation)
    )
    data["eval"]["samples"] = s["eval_samples"]
    run = run_cli(data, workdir / f"d{count}")
    if run.returncode != 0 or run.run_dir is None:
        raise RuntimeError(f"omnisched run failed ({run.returncode}):\n{run.stderr_tail}")
    t = timing_row(run.run_dir)
    evals = {r["label"]: r["eval_s"] for r in read_metrics(run.run_dir, kind="eval")}
    between = sum(v for label, v in evals.items() if label != "base")
    loop = t["eval_s"] + t["train_s"]
    return {
        "domains": list(domains),
        "steps_per_phase": steps,
        "eval_sizes": {d: sizes[d] for d in domains},
        "eval_s": t["eval_s"],
        "train_s": t["train_s"],
        "wall_s": t["wall_s"],
        "warm_start_s": t["warm_start_s"],
        "process_wall_s": run.wall_s,
        "evals_s": evals,
        "between_phases_s": between,
        "share_between_phases": between / loop,
        "share_of_loop": t["eval_s"] / loop,
        "share_of_wall": t["eval_s"] / t["wall_s"],
        "peak_pss_gib": run.peak_pss_gib,
    }


def figures(runs: dict[int, dict[str, Any]]) -> list[Figure]:
    top = max(runs)
    out = []
    for count, r in sorted(runs.items()):
        target = TARGET if count == top else None
        out += [
            Figure(
                f"between-phase eval share of run wall, {count} domain(s)",
                r["between_phases_s"] / r["wall_s"],
                "fraction",
                target=target,
                higher_is_better=False,
                note="the evaluation after each phase / the run's wall time",
            ),
            Figure(
                f"between-phase eval share of eval+train, {count} domain(s)",
                r["share_between_phases"],
                "fraction",
                higher_is_better=False,
                note="the same / (all evaluations + all GRPO steps): no start-up",
            ),
            Figure(
                f"all-eval share of eval+train, {count} domain(s)",
                r["share_of_loop"],
                "fraction",
                note="+ the baseline eval, which also pays the actors' first calls",
            ),
        ]
    if len(runs) > 1:
        low = runs[min(runs)]["share_between_phases"]
        growth = runs[top]["share_between_phases"] / low if low else float("nan")
        out.append(
            Figure(f"between-phase eval share growth, {min(runs)} -> {top} domains", growth, "x")
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--domains", help="comma-separated domain counts, e.g. 1,2,4")
    parser.add_argument("--scale", type=int, default=None, help="shrink factor k of the run")
    parser.add_argument("--model", type=Path, help="HF model folder (default: bench/models.py sft)")
    args = parser.parse_args()
    s = settings(args)
    if args.model is None:
        from models import recipe_model, sft_model

        full = mode(args) == "full"
        args.model = recipe_model(args.threads) if full else sft_model(args.smoke, args.threads)
    runs: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sched-") as tmp:
        for count in s["domain_counts"]:
            runs[count] = one_run(args.model, count, s, Path(tmp))
            r = runs[count]
            print(
                f"{count} domain(s): eval {r['eval_s']:.1f} s, train {r['train_s']:.1f} s, "
                f"wall {r['wall_s']:.1f} s, peak {r['peak_pss_gib']:.2f} GiB",
                flush=True,
            )
    details = {"runs": runs, "model": str(args.model)}
    write_result(
        "scheduler", args, figures(runs), details, settings={**s, "model": str(args.model)}
    )


if __name__ == "__main__":  # the reward sandbox starts processes (forkserver)
    main()
