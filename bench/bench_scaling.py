"""Scaling table: GRPO step time and peak memory as group size, prompts per step, sequence
length and domain count double.

    .venv/bin/python bench/bench_scaling.py [--quick | --smoke] [--steps 2] [--threads 2]

omnisched's own controller, driven in this process: `Controller.setup` starts local Ray and the
rollout, reward, learner and scheduler actors once, then each point sets the recipe's
`rollout.group_size` (G), `schedule.prompts_per_step` (P), `rollout.max_new_tokens` (T) and
the domains trained (D: math, +code, +qa +creative) and runs `Controller.train_step`: one
warm-up step, then `--steps` timed steps (generate + score + advantages + learner step +
weight sync). Base point G8 / P16 / T40 / D1; each axis doubles from it (quick: once;
full: twice).
So that every point does the work its sizes say: the model is the tiny recipe's shape with
random weights (completions run to about T tokens), and every domain's reward is the `length`
verifier (a continuous score, so every group carries signal and the learner trains every
sample, as TRL would; verifier costs are measured in bench_rewards.py). Peak memory: the
largest PSS of this process tree (driver + Ray + actors) sampled during the point's steps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import GIB, Figure, add_common_args, by_mode, model_folder, write_result
from loop import MemorySampler, recipe_data

ORDER = ("math", "code", "qa", "creative")
LENGTH_REWARD = [{"verifier": "length", "options": {"max_length": 1024, "buffer": 1024}}]


def points(args: argparse.Namespace) -> list[dict[str, int]]:
    """The base point, then each axis doubled (`doublings` times)."""
    base = {"G": 2, "P": 2, "T": 8, "D": 1} if args.smoke else {"G": 8, "P": 16, "T": 40, "D": 1}
    doublings = by_mode(args, 2, 1, 1)
    out = [dict(base)]
    for axis in ("G", "P", "T", "D"):
        for k in range(1, doublings + 1):
            value = base[axis] * 2**k
            if axis == "D" and value > len(ORDER):
                continue
            out.append({**base, axis: value})
    return out


def start(model: Path, threads: int, workdir: Path) -> Any:
    """A set-up Controller over all four domains (each rewarded by `length`)."""
    from omnisched.config import validate_recipe
    from omnisched.orchestration.backend import make_backend
    from omnisched.orchestration.controller import Controller

    data = recipe_data(
        model,
        ORDER,
        group_size=8,
        prompts=16,
        new_tokens=40,
        steps_per_phase=1,
        threads=threads,
        eval_sizes=dict.fromkeys(ORDER, 1),
        name="bench-scaling",
    )
    for dom in data["domains"]:
        dom["reward"] = LENGTH_REWARD
    # The learner does its full fwd + bwd + AdamW work, but with a vanishing step the policy
    # stays the random model: a real lr trained it to stop early under the length reward, and
    # completions shrank from ~32 to ~2 tokens across the points, so they were not comparable.
    data["learner"]["lr"] = 1e-12
    ctl = Controller(validate_recipe(data), workdir / "run")
    ctl.setup(make_backend(ctl.recipe.ray))
    return ctl


def measure(ctl: Any, point: dict[str, int], steps: int, memory: MemorySampler) -> dict:
    ctl.recipe.rollout.group_size = point["G"]
    ctl.recipe.schedule.prompts_per_step = point["P"]
    ctl.recipe.rollout.max_new_tokens = point["T"]
    domains = list(ORDER[: point["D"]])
    memory.reset()
    ctl.train_step(domains)  # warm-up: new shapes, allocator growth
    records = [ctl.train_step(domains) for _ in range(steps)]
    memory.sample()

    def mean(key: str) -> float:
        return sum(float(r.get(key, 0.0)) for r in records) / len(records)

    samples = point["G"] * point["P"]
    return {
        **point,
        "step_s": mean("time/step_s"),
        "generate_s": mean("time/generate_s"),
        "score_s": mean("time/score_s"),
        "learn_sync_s": mean("time/learn_sync_s"),
        "completion_len": mean("completion_len"),
        "samples_trained": mean("samples_trained"),
        "samples": samples,
        "samples_per_s": samples / mean("time/step_s"),
        "peak_pss_gib": memory.peak_pss / GIB,
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = "| G | P | T | D | step s | gen s | score s | learn+sync s | len | trained | peak GiB |"
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['G']} | {r['P']} | {r['T']} | {r['D']} | {r['step_s']:.2f} | "
            f"{r['generate_s']:.2f} | {r['score_s']:.2f} | {r['learn_sync_s']:.2f} | "
            f"{r['completion_len']:.1f} | {r['samples_trained']:.0f}/{r['samples']} | "
            f"{r['peak_pss_gib']:.2f} |"
        )
    return "\n".join(lines)


def figures(rows: list[dict[str, Any]]) -> list[Figure]:
    """Step time of each doubled point relative to the base point (2.0 = linear)."""
    base = rows[0]
    out = [Figure("scaling base step time", base["step_s"], "s/step")]
    for r in rows[1:]:
        axis = next(a for a in ("G", "P", "T", "D") if r[a] != base[a])
        factor = r[axis] // base[axis]
        out.append(
            Figure(
                f"step time at {axis} x{factor} ({axis}={r[axis]})",
                r["step_s"],
                "s/step",
                base["step_s"],
                "base point",
                note=f"peak {r['peak_pss_gib']:.2f} GiB",
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per point")
    parser.add_argument("--model", type=Path, help="HF model folder (default: random weights)")
    args = parser.parse_args()
    steps = args.steps or by_mode(args, 2, 1, 1)
    memory = MemorySampler().start()
    rows = []
    with model_folder(args, "bench-scaling-") as tmp:
        ctl = start(args.model, args.threads, tmp)
        try:
            for point in points(args):
                rows.append(measure(ctl, point, steps, memory))
                print(f"{point}: {rows[-1]['step_s']:.2f} s/step", flush=True)
        finally:
            ctl.metrics.close()
            ctl.backend.shutdown()
            memory.stop()
    print(table(rows))
    settings = {"steps": steps, "threads": args.threads, "points": points(args)}
    details = {"rows": rows, "table_md": table(rows), "reward": LENGTH_REWARD}
    write_result("scaling", args, figures(rows), details, settings=settings)


if __name__ == "__main__":  # Ray and the reward sandbox start processes
    main()
