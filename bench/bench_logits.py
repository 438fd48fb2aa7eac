"""Logprobs over a large vocabulary: the whole [tokens, V] logits at once vs `logits_chunk_tokens`
chunks (`omnisched.learner.logits`), peak memory and time of one forward + backward.

    .venv/bin/python bench/bench_logits.py [--quick | --smoke] [--vocab 151936 --hidden 64
        --tokens 2048 --chunk 256 --steps 3 --threads 2 --bf16]

Both sides compute a GRPO-like loss -sum(A_t * log p(label_t)) / tokens from hidden states
[tokens, hidden] through one LM head (hidden x vocab, no bias) at temperature 0.7, with the
entropy metric, then backward to the hidden states and the head. The whole side is
`grpo.token_logprobs_and_entropy(head(h), ...)`; the chunked side is
`logits.chunked_logprobs_and_entropy(h, head, ..., chunk)`. Each side runs in its own
process: peak memory = the process's peak RSS (`ru_maxrss`) over its RSS once the inputs are
built (on CUDA, `max_memory_allocated` over the allocated bytes before the step); time = the
median of `--steps` steps after the first. The first step's loss, gradient norms and mean
entropy are printed for both sides: they must agree.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Figure, add_common_args, by_mode, set_threads, write_result

MIB = 2**20


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "vocab": args.vocab or by_mode(args, 151_936, 151_936, 4096),
        "hidden": args.hidden or by_mode(args, 64, 64, 16),
        "tokens": args.tokens or by_mode(args, 2048, 1024, 64),
        "chunk": args.chunk or by_mode(args, 256, 256, 16),
        "steps": args.steps or by_mode(args, 3, 2, 1),
        "temperature": 0.7,
        "bf16": args.bf16,
        "threads": args.threads,
    }


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one_side(side: str, s: dict[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: this side's peak memory over its inputs, step time, loss, grads."""
    import torch

    from omnisched.learner.grpo import token_logprobs_and_entropy
    from omnisched.learner.logits import chunked_logprobs_and_entropy

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    head = torch.nn.Linear(s["hidden"], s["vocab"], bias=False, device=device)
    hidden = torch.randn(s["tokens"], s["hidden"], device=device, requires_grad=True)
    labels = torch.randint(0, s["vocab"], (s["tokens"],), device=device)
    adv = torch.randn(s["tokens"], device=device)
    t = s["temperature"]

    def step() -> tuple[float, float, float, float]:
        hidden.grad, head.weight.grad = None, None
        with torch.autocast(device, dtype=torch.bfloat16, enabled=s["bf16"]):
            if side == "whole":
                logp, entropy = token_logprobs_and_entropy(head(hidden), labels, t)
            else:
                logp, entropy = chunked_logprobs_and_entropy(hidden, head, labels, t, s["chunk"])
        loss = -(adv * logp).sum() / s["tokens"]
        loss.backward()
        grads = float(hidden.grad.norm()), float(head.weight.grad.norm())
        return float(loss), *grads, float(entropy.mean())

    # warm-up on two tokens: what loads on first use (kernels, lazy imports) is not the step's
    lp, _ = chunked_logprobs_and_entropy(hidden[:2], head, labels[:2], t, 1)
    token_logprobs_and_entropy(head(hidden[:2]), labels[:2], t)[0].sum().add(lp.sum()).backward()
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = rss_bytes()
    loss, h_norm, w_norm, entropy = step()
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = []
    for _ in range(s["steps"]):
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {
        "device": device,
        "peak_mib": peak / MIB,
        "step_s": statistics.median(times),
        "loss": loss,
        "grad_norm_hidden": h_norm,
        "grad_norm_head": w_norm,
        "mean_entropy": entropy,
    }


def run_side(side: str, s: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--side", side, "--settings", json.dumps(s)]
    cmd += ["--threads", str(s["threads"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} side failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def figures(d: dict[str, Any]) -> list[Figure]:
    whole, chunked = d["whole"], d["chunked"]
    return [
        Figure(
            "logits peak memory (fwd+bwd)",
            chunked["peak_mib"],
            "MiB",
            whole["peak_mib"],
            "whole logits",
            higher_is_better=False,
        ),
        Figure(
            "logits step time",
            chunked["step_s"],
            "s",
            whole["step_s"],
            "whole logits",
            higher_is_better=False,
        ),
        Figure("full fp32 logits of the batch", d["full_fp32_logits_mib"], "MiB"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    for flag in ("--vocab", "--hidden", "--tokens", "--chunk", "--steps"):
        parser.add_argument(flag, type=int, default=None)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (default fp32)")
    parser.add_argument("--side", choices=("whole", "chunked"), help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args()
    set_threads(args.threads)
    if args.side:  # one side, in this fresh process
        print(json.dumps(one_side(args.side, json.loads(args.settings))))
        return
    s = settings(args)
    details: dict[str, Any] = {side: run_side(side, s) for side in ("whole", "chunked")}
    details["full_fp32_logits_mib"] = s["tokens"] * s["vocab"] * 4 / MIB
    for key in ("loss", "grad_norm_hidden", "grad_norm_head", "mean_entropy"):
        print(f"{key}: whole {details['whole'][key]:.6g} chunked {details['chunked'][key]:.6g}")
    write_result("logits", args, figures(details), details, settings=s)


if __name__ == "__main__":
    main()
