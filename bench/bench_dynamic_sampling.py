"""DAPO dynamic sampling on the tiny recipe: the same run with and without it.

    .venv/bin/python bench/bench_dynamic_sampling.py [--smoke] [--max-rounds 3]

Both runs: recipes/tiny.yaml with a fixed order (`schedule.policy: sequential`, math, code, qa,
creative, so both train the same domains in the same phases), one seed, in-process workers
(`ray.enabled: false`), the recipe's warm start (cached: both start from the same model).
Figures: samples trained per step (target with dynamic sampling: prompts_per_step x group_size),
the fraction of drawn groups filtered for tied rewards, the extra generation rounds and prompts
per step, generation time per step (the extra generation's cost, as a ratio to the run without),
and each phase's own-domain gain (accuracy on the trained domain after its phase minus before)
with and without. One seed: the own-phase gains are one draw each, not a significance test.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path
from typing import Any

from common import Figure, add_common_args, write_result
from loop import TINY_RECIPE, run_cli, train_rows

SMOKE = {
    "model": {"tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1,
                       "intermediate_size": 128},
              "warm_start": {"steps": 20, "batch_size": 16, "examples_per_domain": 100}},
    "schedule": {"steps_per_phase": 2, "prompts_per_step": 4},
    "eval": {"samples": 1},
}  # fmt: skip


def recipe(args: argparse.Namespace, dynamic: bool, cache: Path) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(TINY_RECIPE.read_text())
    data["run"].update(name=f"dynamic-{'on' if dynamic else 'off'}", threads=args.threads)
    data["model"]["warm_start"]["cache_dir"] = str(cache)
    data["ray"] = {"enabled": False}
    data["schedule"].update(policy="sequential", order=[d["name"] for d in data["domains"]])
    data["rollout"]["dynamic_sampling"] = {"enabled": dynamic, "max_rounds": args.max_rounds}
    if args.smoke:
        for key, value in SMOKE.items():
            for k, v in value.items():
                base = data.setdefault(key, {}).get(k)
                data[key][k] = {**base, **v} if isinstance(base, dict) else copy.deepcopy(v)
        for d in data["domains"]:
            d.update(eval_size=4, demos=100)
    return data


def own_phase_gains(run_dir: Path) -> dict[str, float]:
    """Accuracy of each phase's domain after its phase minus before it."""
    from omnisched.schedule.state import SchedulerState

    state = SchedulerState.load(run_dir / "scheduler_state.json")
    gains, before = {}, state.baseline
    for p in state.completed():
        d = p.trained[0]
        gains[d] = p.result.accuracy[d] - before.accuracy[d]  # type: ignore[union-attr]
        before = p.result
    return gains


def summary(run_dir: Path, per_step: int) -> dict[str, Any]:
    rows = train_rows(run_dir)

    def mean(key: str) -> float:
        return sum(r.get(key, 0.0) for r in rows) / len(rows)

    gains = own_phase_gains(run_dir)
    return {
        "steps": len(rows),
        "samples_trained_per_step": mean("samples_trained"),
        "full_batch": per_step,
        "filtered_frac": mean("dynamic/filtered_frac"),
        "extra_rounds_per_step": mean("dynamic/extra_rounds"),
        "extra_prompts_per_step": mean("dynamic/extra_prompts"),
        "generate_s_per_step": mean("time/generate_s"),
        "step_s": mean("time/step_s"),
        "own_phase_gain": gains,
        "mean_own_phase_gain": sum(gains.values()) / len(gains),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--max-rounds", type=int, default=3)
    args = parser.parse_args()
    details: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-dynamic-") as tmp:
        cache = Path(tmp) / "cache"
        for dynamic in (False, True):
            data = recipe(args, dynamic, cache)
            run = run_cli(data, Path(tmp) / f"dynamic-{dynamic}", memory=False)
            if run.run_dir is None:
                raise SystemExit(f"the run failed:\n{run.stderr_tail}")
            per_step = data["schedule"]["prompts_per_step"] * data["rollout"]["group_size"]
            details["on" if dynamic else "off"] = summary(run.run_dir, per_step)
    on, off = details["on"], details["off"]
    per_domain = ", ".join(
        f"{d} {on['own_phase_gain'][d]:+.3f} vs {off['own_phase_gain'][d]:+.3f}"
        for d in on["own_phase_gain"]
    )
    figures = [
        Figure("samples trained per step, dynamic sampling", on["samples_trained_per_step"],
               "samples", on["full_batch"], "prompts_per_step x group_size", 1.0,
               note=f"without it: {off['samples_trained_per_step']:.1f}"),
        Figure("filtered fraction of drawn groups (tied rewards)", on["filtered_frac"], "fraction",
               note=f"{on['extra_rounds_per_step']:.2f} extra rounds and "
                    f"{on['extra_prompts_per_step']:.1f} extra prompts per step"),
        Figure("generation time per step, with / without", on["generate_s_per_step"], "s",
               off["generate_s_per_step"], "without dynamic sampling", higher_is_better=False),
        Figure("mean own-phase gain, with dynamic sampling", on["mean_own_phase_gain"],
               "accuracy", note=f"without: {off['mean_own_phase_gain']:+.3f}; {per_domain}"),
    ]  # fmt: skip
    write_result("dynamic_sampling", args, figures, details)


if __name__ == "__main__":
    main()
