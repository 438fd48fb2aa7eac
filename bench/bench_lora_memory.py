"""Peak memory of LoRA (`learner.lora`) against full fine-tuning, same model, same batch.

    .venv/bin/python bench/bench_lora_memory.py [--hidden 512 --layers 8 --vocab 32000
        --samples 16 --prompt-tokens 32 --new-tokens 64 --micro-batch 8 --steps 3 --r 16]

Each mode runs in a fresh process: a Qwen2-architecture model built from config (random
weights, fp32, untied head; ~62M parameters at the defaults), `TorchLearner` (bf16 autocast
where the CPU runs it natively, AdamW) taking `--steps` GRPO steps on `--samples` random
completions with random non-zero advantages. Peak memory = the process's peak RSS
(`ru_maxrss`, which includes the model build and the imports); the baseline RSS right after
building the model is given too, so peak - baseline is what training adds (gradients, AdamW
states, activations). Writes bench/results/lora_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

GIB = 2**30


def run_mode(args: argparse.Namespace) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from omnisched.config.lora import LoraConfig
    from omnisched.config.schema import LearnerConfig
    from omnisched.learner import TorchLearner, TrainSample

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
        num_key_value_heads=max(1, args.hidden // 256), max_position_embeddings=512,
        tie_word_embeddings=False,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    lora = LoraConfig(r=args.r, alpha=2 * args.r) if args.mode == "lora" else None
    cfg = LearnerConfig(lr=1e-4, micro_batch_size=args.micro_batch, lora=lora)
    learner = TorchLearner(model, cfg, pad_token_id=0)
    trainable = sum(p.numel() for p in learner.params)
    rng = random.Random(0)
    samples = [
        TrainSample(
            [rng.randrange(1, args.vocab) for _ in range(args.prompt_tokens)],
            [rng.randrange(1, args.vocab) for _ in range(args.new_tokens)],
            advantage=rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.5),
        )
        for _ in range(args.samples)
    ]
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        learner.train_step(samples)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "mode": args.mode,
        "params": params,
        "trainable_params": trainable,
        "baseline_rss_gib": round(baseline / GIB, 3),
        "peak_rss_gib": round(peak / GIB, 3),
        "added_by_training_gib": round((peak - baseline) / GIB, 3),
        "step_s": [round(t, 2) for t in times],
        "bf16": learner.cfg.bf16,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["full", "lora"], help="one mode, in this process")
    for name, default in [
        ("hidden", 512), ("layers", 8), ("vocab", 32000), ("samples", 16), ("prompt-tokens", 32),
        ("new-tokens", 64), ("micro-batch", 8), ("steps", 3), ("r", 16), ("threads", 2),
    ]:  # fmt: skip
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results/lora_memory.json")
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return
    settings = {k: v for k, v in vars(args).items() if k not in ("mode", "out")}
    passed = [x for k, v in settings.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    results = {}
    for mode in ("full", "lora"):
        cmd = [sys.executable, __file__, "--mode", mode, *passed]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[mode] = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(results[mode]))
    full, lora = results["full"], results["lora"]
    summary = {
        "settings": settings,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "full": full,
        "lora": lora,
        "peak_ratio_lora_over_full": round(lora["peak_rss_gib"] / full["peak_rss_gib"], 3),
        "added_ratio_lora_over_full": round(
            lora["added_by_training_gib"] / full["added_by_training_gib"], 3
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in summary if "ratio" in k}))


if __name__ == "__main__":
    main()
