"""Learner throughput: omnisched's TorchLearner vs a raw torch fwd+bwd+AdamW loop, and model
FLOP utilisation against this machine's measured matmul peak.

    .venv/bin/python bench/bench_learner.py [--quick | --smoke] [--samples 128 --new-tokens 40
        --micro-batch 16 --steps 5 --threads 2 --model DIR]

Same model (the tiny recipe's shape, random weights, two copies loaded from one folder with
omnisched's CPU attention choice), same batch: `--samples` math prompts, each with a random
completion of `--new-tokens` tokens and a random non-zero advantage, micro-batches of
`--micro-batch` (longest first, as TorchLearner cuts them), bf16 autocast over fp32 weights,
AdamW (lr 1e-4, betas 0.9/0.99), grad-norm clip 1.0, one optimizer step per batch.
- ours: `TorchLearner.train_step(samples)`: collate, logits at completion positions only,
  GRPO clipped loss (token-mean), entropy metric, backward, clip, AdamW.
- peer: the loop every GRPO learner reduces to, on tensors collated once beforehand: full
  logits, token logprobs by cross-entropy, loss = -sum(A * logp) / tokens, backward, clip, AdamW.
One warm-up step each, then `--steps` timed steps alternating ours and peer; tokens/s =
(prompt + completion tokens of the batch) / median step time. Target >= 0.8x.
MFU = achieved FLOP/s / peak FLOP/s, achieved = 6 x N x tokens per step time (N = matmul
parameters: attention and MLP projections + LM head, embedding lookup excluded; the attention
score/value products are left out of the headline and given separately in details). Peak = the
best n x n @ n x n torch.matmul (n 2048) at the same threads, in bf16 and in fp32.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Figure,
    add_common_args,
    by_mode,
    cpu_attention,
    matmul_peak,
    median,
    model_folder,
    quiet,
    set_threads,
    train_flops,
    write_result,
)

IGNORE = -100


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "samples": args.samples or by_mode(args, 128, 128, 8),
        "new_tokens": args.new_tokens or by_mode(args, 40, 40, 8),
        "micro_batch": args.micro_batch or by_mode(args, 16, 16, 4),
        "steps": args.steps or by_mode(args, 5, 3, 1),
        "matmul_n": by_mode(args, 2048, 2048, 256),
        "lr": 1e-4,
        "betas": (0.9, 0.99),
        "threads": args.threads,
        "autocast": "bfloat16",
    }


def make_samples(tokenizer: Any, s: dict[str, Any], seed: int = 0) -> list:
    from models import math_prompts

    from omnisched.learner.base import TrainSample

    rng = random.Random(seed)
    out = []
    for prompt in math_prompts(s["samples"], seed):
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        completion = [rng.randrange(4, 101) for _ in range(s["new_tokens"])]  # ASCII tokens
        out.append(TrainSample(ids, completion, rng.choice((-1.0, 1.0)) * rng.uniform(0.1, 2)))
    return out


def load_pair(path: Path) -> tuple[Any, Any, Any]:
    """Two copies of the model as omnisched's learner worker loads it, and the tokenizer."""
    from omnisched.model import load_model

    attn = cpu_attention()
    a, tokenizer = load_model(path, "float32", attn)
    b, _ = load_model(path, "float32", attn)
    return a, b, tokenizer


def ours_step(model: Any, tokenizer: Any, samples: list, s: dict[str, Any]) -> Callable[[], None]:
    from omnisched.config.schema import LearnerConfig
    from omnisched.learner.torch_learner import TorchLearner

    cfg = LearnerConfig(lr=s["lr"], betas=s["betas"], micro_batch_size=s["micro_batch"], bf16=True)
    learner = TorchLearner(model, cfg, pad_token_id=tokenizer.pad_token_id)
    return lambda: learner.train_step(samples)


def collate(samples: list, size: int, pad: int) -> list[tuple]:
    """Right-padded (ids, mask, labels, advantages) micro-batches, longest first."""
    import torch

    order = sorted(samples, key=lambda x: len(x.prompt_ids) + len(x.completion_ids), reverse=True)
    chunks = []
    for i in range(0, len(order), size):
        part = order[i : i + size]
        width = max(len(x.prompt_ids) + len(x.completion_ids) for x in part)
        ids = torch.full((len(part), width), pad, dtype=torch.long)
        labels = torch.full((len(part), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(part), width), dtype=torch.long)
        for r, x in enumerate(part):
            row, n = x.prompt_ids + x.completion_ids, len(x.prompt_ids)
            ids[r, : len(row)] = torch.tensor(row)
            labels[r, n : len(row)] = torch.tensor(x.completion_ids)
            mask[r, : len(row)] = 1
        adv = torch.tensor([x.advantage for x in part])
        chunks.append((ids, mask, labels, adv))
    return chunks


def raw_step(model: Any, tokenizer: Any, samples: list, s: dict[str, Any]) -> Callable[[], None]:
    import torch
    import torch.nn.functional as F

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s["lr"], betas=s["betas"], weight_decay=0.0)
    chunks = collate(samples, s["micro_batch"], tokenizer.pad_token_id)
    num_tokens = sum(len(x.completion_ids) for x in samples)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        for ids, mask, labels, adv in chunks:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            shift, targets = logits[:, :-1].float(), labels[:, 1:]
            nll = F.cross_entropy(
                shift.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="none"
            ).view(targets.shape)
            loss = (nll * adv[:, None]).sum() / num_tokens  # -(A * logp), summed over tokens
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    return step


def time_alternating(steps: dict[str, Callable[[], None]], n: int) -> dict[str, list[float]]:
    """One warm-up call each, then `n` timed calls per side, interleaved."""
    for fn in steps.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(n):
        for k, fn in steps.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return times


def measure(model_dir: Path, s: dict[str, Any]) -> dict[str, Any]:
    ours_model, raw_model, tokenizer = load_pair(model_dir)
    samples = make_samples(tokenizer, s)
    times = time_alternating(
        {
            "ours": ours_step(ours_model, tokenizer, samples, s),
            "peer": raw_step(raw_model, tokenizer, samples, s),
        },
        s["steps"],
    )
    tokens = sum(len(x.prompt_ids) + len(x.completion_ids) for x in samples)
    out: dict[str, Any] = {"tokens_per_step": tokens, "step_s": times}
    cfg = ours_model.config
    mean_len = tokens / len(samples)
    for side in ("ours", "peer"):
        step = median(times[side])
        out[f"{side}_tokens_per_s"] = tokens / step
        out[f"{side}_flops_per_s_6N"] = train_flops(cfg, tokens, mean_len, False) / step
        out[f"{side}_flops_per_s_6N_attn"] = train_flops(cfg, tokens, mean_len, True) / step
    out["parameters"] = sum(p.numel() for p in ours_model.parameters())
    return out


def figures(d: dict[str, Any]) -> list[Figure]:
    bf16, fp32 = d["peak_flops_per_s"]["bfloat16"], d["peak_flops_per_s"]["float32"]
    return [
        Figure(
            "learner tokens/s",
            d["ours_tokens_per_s"],
            "tokens/s",
            d["peer_tokens_per_s"],
            "raw torch fwd+bwd+AdamW",
            0.8,
        ),
        Figure(
            "learner MFU (6N) vs bf16 matmul peak",
            d["ours_flops_per_s_6N"] / bf16,
            "of peak",
            d["peer_flops_per_s_6N"] / bf16,
            "raw torch loop",
        ),
        Figure(
            "learner MFU (6N) vs fp32 matmul peak",
            d["ours_flops_per_s_6N"] / fp32,
            "of peak",
            d["peer_flops_per_s_6N"] / fp32,
            "raw torch loop",
        ),
        Figure("matmul peak bf16", bf16 / 1e9, "GFLOP/s"),
        Figure("matmul peak fp32", fp32 / 1e9, "GFLOP/s"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--model", type=Path, help="HF model folder (default: random weights)")
    for flag in ("--samples", "--new-tokens", "--micro-batch", "--steps"):
        parser.add_argument(flag, type=int, default=None)
    args = parser.parse_args()
    s = settings(args)
    set_threads(args.threads)
    quiet()
    with model_folder(args, "bench-learner-"):
        details = measure(args.model, s)
    details["peak_flops_per_s"] = {
        dt: matmul_peak(dt, n=s["matmul_n"], reps=3) for dt in ("bfloat16", "float32")
    }
    write_result("learner", args, figures(details), details, settings=s)


if __name__ == "__main__":
    main()
