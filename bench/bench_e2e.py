"""End-to-end GRPO step throughput: omnisched's real Ray loop vs TRL's GRPOTrainer.

    .venv/bin/python bench/bench_e2e.py [--quick | --smoke] [--model DIR] [--side both|ours|trl]
        [--group-size 8 --prompts 16 --new-tokens 40 --warmup 2 --steps 24 --threads 2]

Identical settings on both sides: the same model folder (bench/models.py `sft`), prompts of the
tiny recipe's `math` domain, G completions per prompt, P prompts per optimizer step (one
optimizer step per batch of P x G), max new tokens, temperature 1, top-p 1, no top-k, no KL
(beta 0), token-mean loss (TRL `dapo`), group-scaled advantages, clip 0.2, AdamW lr 1e-4
betas (0.9, 0.99), grad-norm clip 1, micro-batches of 16 (TRL: per-device batch 16, gradient
accumulation P*G/16, so generation stays one batch of P*G), bf16 autocast over fp32 master
weights (omnisched's rollout engine samples with a bf16 copy), torch threads 2, the same
attention implementation (omnisched's CPU choice), no gradient checkpointing, and the same
reward function: the `math` verifier of `rewards` (TRL calls it in-process; omnisched in its
reward actor through `score_batch`).

ours: `omnisched run` of a one-domain tiny recipe (local Ray actors: rollout, reward, learner,
scheduler). Steady-state rate from metrics.jsonl timestamps, first `--warmup` steps dropped:
a step = generate + score + advantages + learner step + weight sync + step bookkeeping.
peer: `GRPOTrainer.train()`; step end times from a TrainerCallback, same warm-up rule.
samples/s counts the P x G completions of a step; tokens/s their generated tokens (EOS
included). omnisched leaves groups whose rewards all tie out of the learner batch (zero
advantage, no KL: no gradient); TRL trains them; `samples_trained` reports it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Figure,
    add_common_args,
    by_mode,
    cpu_attention,
    quiet,
    set_threads,
    steady_rate,
    write_result,
)
from loop import recipe_data, run_cli, steady_stats, train_rows

MICRO_BATCH = 16  # the tiny recipe's learner.micro_batch_size


def settings(args: argparse.Namespace) -> dict[str, Any]:
    smoke = args.smoke
    s = {
        "group_size": args.group_size or (2 if smoke else 8),
        "prompts": args.prompts or (2 if smoke else 16),
        "new_tokens": args.new_tokens or (8 if smoke else 40),
        "warmup": args.warmup or by_mode(args, 2, 1, 1),
        "steps": args.steps or by_mode(args, 24, 3, 1),  # 6 steps (~2 s) moved the ratio by 15%
        "micro_batch": 4 if smoke else MICRO_BATCH,
        "lr": 1e-4,
        "threads": args.threads,
        "dtype": "bf16 autocast (fp32 master weights)",
    }
    if (s["prompts"] * s["group_size"]) % s["micro_batch"]:
        raise SystemExit(f"prompts x group size must be a multiple of {s['micro_batch']}")
    return s


def ours(model: Path, s: dict[str, Any], workdir: Path) -> dict[str, Any]:
    data = recipe_data(
        model,
        ["math"],
        group_size=s["group_size"],
        prompts=s["prompts"],
        new_tokens=s["new_tokens"],
        steps_per_phase=s["warmup"] + s["steps"],
        threads=s["threads"],
        eval_sizes={"math": 4},
        name="bench-e2e",
    )
    data["eval"]["samples"] = 1  # the baseline and phase-end evaluations are not timed here
    data["learner"].update(micro_batch_size=s["micro_batch"], lr=s["lr"], kl_coef=0.0)
    run = run_cli(data, workdir, memory=False)  # no sampler competing for the 2 cores
    if run.returncode != 0 or run.run_dir is None:
        raise RuntimeError(f"omnisched run failed ({run.returncode}):\n{run.stderr_tail}")
    stats = steady_stats(train_rows(run.run_dir), s["warmup"], s["prompts"] * s["group_size"])
    return {**stats, "run_wall_s": run.wall_s}


def math_dataset(n: int, seed: int = 0):
    """`n` prompts of the tiny recipe's math domain with their `answer` column."""
    from datasets import Dataset
    from models import math_examples

    rows = [{"prompt": ex.prompt, "answer": ex.columns["answer"]} for ex in math_examples(n, seed)]
    return Dataset.from_list(rows)


def trl_config(s: dict[str, Any], output_dir: Path, group_size: int, cuda: bool = False):
    """TRL's GRPOConfig matching omnisched's settings `s` (token-mean loss, no KL, lr, micro-batch,
    T=1, no top-k/top-p): `s["warmup"] + s["steps"]` steps of `s["prompts"] * group_size`."""
    from trl import GRPOConfig

    batch = s["prompts"] * group_size
    return GRPOConfig(
        output_dir=str(output_dir),
        max_steps=s["warmup"] + s["steps"],
        per_device_train_batch_size=s["micro_batch"],
        gradient_accumulation_steps=batch // s["micro_batch"],
        num_generations=group_size,
        max_completion_length=s["new_tokens"],
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        num_iterations=1,
        loss_type="dapo",
        scale_rewards="group",
        epsilon=0.2,
        learning_rate=s["lr"],
        adam_beta1=0.9,
        adam_beta2=0.99,
        weight_decay=0.0,
        max_grad_norm=1.0,
        lr_scheduler_type="constant",
        bf16=True,
        use_cpu=not cuda,
        gradient_checkpointing=False,
        model_init_kwargs={
            "dtype": "float32",
            "attn_implementation": "sdpa" if cuda else cpu_attention(),
        },
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )


def trl_side(model: Path, s: dict[str, Any], workdir: Path) -> dict[str, Any]:
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOTrainer

    import rewards

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.logs: list[dict[str, float]] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                self.logs.append(dict(logs))

    set_threads(s["threads"])
    quiet()
    clock = StepClock()
    steps = s["warmup"] + s["steps"]
    start = time.perf_counter()
    trainer = GRPOTrainer(
        model=str(model),
        reward_funcs=[rewards.get("math")],
        args=trl_config(s, workdir / "trl", s["group_size"]),
        train_dataset=math_dataset(s["prompts"] * steps),
        callbacks=[clock],
    )
    trainer.remove_callback(PrinterCallback)  # no log dict printed per step
    trainer.train()
    wall = time.perf_counter() - start
    batch = s["prompts"] * s["group_size"]
    lengths = [log["completions/mean_length"] for log in clock.logs]
    if len(clock.ends) != steps or len(lengths) != steps:
        raise RuntimeError(f"TRL ran {len(clock.ends)} steps with {len(lengths)} logs, not {steps}")
    w = s["warmup"]
    return {
        "steps_measured": steps - w,
        "samples_per_s": steady_rate(clock.ends, [batch] * steps, w),
        "tokens_per_s": steady_rate(clock.ends, [n * batch for n in lengths], w),
        "step_s": (clock.ends[-1] - clock.ends[w - 1]) / (steps - w),
        "completion_len": sum(lengths[w:]) / (steps - w),
        "reward_mean": sum(log.get("reward", 0.0) for log in clock.logs[w:]) / (steps - w),
        "frac_reward_zero_std": sum(log.get("frac_reward_zero_std", 0.0) for log in clock.logs[w:])
        / (steps - w),
        "samples_trained": batch,
        "run_wall_s": wall,
    }


def figures(ours_: dict | None, trl: dict | None) -> list[Figure]:
    """Ours beside TRL with the 3x target; a single side alone when the other did not run."""
    out = []
    for key, unit, target in (
        ("samples_per_s", "samples/s", 3.0),
        ("tokens_per_s", "tokens/s", None),
    ):
        if ours_ and trl:
            note = (
                f"learner trained {ours_['samples_trained']:.0f} of {trl['samples_trained']} "
                f"samples/step (tied groups skipped), TRL all; completion length "
                f"{ours_['completion_len']:.1f} vs {trl['completion_len']:.1f}"
            )
            if ours_["samples_trained"] == 0:
                note += "; WARNING: no group carried signal, omnisched's learner never ran"
            out.append(
                Figure(
                    f"e2e GRPO {unit}",
                    ours_[key],
                    unit,
                    trl[key],
                    "TRL GRPOTrainer",
                    target,
                    note=note,
                )
            )
        elif ours_ or trl:
            side = "omnisched" if ours_ else "TRL GRPOTrainer"
            out.append(Figure(f"e2e GRPO {unit} ({side} only)", (ours_ or trl)[key], unit))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--model", type=Path, help="HF model folder (default: bench/models.py sft)")
    parser.add_argument("--side", choices=("both", "ours", "trl"), default="both")
    for flag in ("--group-size", "--prompts", "--new-tokens", "--warmup", "--steps"):
        parser.add_argument(flag, type=int, default=None)
    args = parser.parse_args()
    s = settings(args)
    if args.model is None:
        from models import sft_model

        args.model = sft_model(args.smoke, args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        ours_ = ours(args.model, s, Path(tmp)) if args.side in ("both", "ours") else None
        trl = trl_side(args.model, s, Path(tmp)) if args.side in ("both", "trl") else None
    details = {"omnisched": ours_, "trl": trl, "model": str(args.model)}
    for side, stats in (("omnisched", ours_), ("TRL", trl)):
        if stats:
            print(
                f"{side}: {stats['step_s']:.3f} s/step over {stats['steps_measured']} steps, "
                f"completion length {stats['completion_len']:.1f}",
                flush=True,
            )
    write_result(
        "e2e", args, figures(ours_, trl), details, settings={**s, "model": str(args.model)}
    )


if __name__ == "__main__":  # the reward sandbox starts processes (forkserver)
    main()
