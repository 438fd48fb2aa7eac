"""Rollout overhead: omnisched's rollout engines vs the raw generate call each one wraps.

    .venv/bin/python bench/bench_rollout_overhead.py --backend hf [--quick | --smoke]
    .venv/bin/python bench/bench_rollout_overhead.py --backend vllm [--quick | --smoke]
        [--prompts 64 (vllm: 32) --n 8 --new-tokens 40 --repeats 3 --threads 2 --model DIR]

Same model folder (the tiny recipe's shape with random weights, so completions run to about
`--new-tokens`; bench/models.py), same prompts (the tiny recipe's math prompts), n samples per
prompt, temperature 1, top-p 1, bf16 weights, the same torch threads.
- hf: `HFEngine.generate` (prefill once per prompt, cache repeated n times, finished rows
  leave the batch, and it also returns every token's logprob and entropy) vs raw
  `model.generate(do_sample=True, top_k=0, num_return_sequences=n)` on the same left-padded
  batch, same attention implementation. Target >= 0.8x.
- vllm: `VLLMEngine.generate` (asks vLLM for the top-k logprobs per step to estimate entropy,
  k 20 or --entropy-topk; builds Completions) vs raw `LLM.generate` without logprobs, on the
  engine's own `vllm.LLM` (so both use the same engine options: CPU KV cache 1 GiB, no chunked
  prefill). Target >= 0.9x.
Each side generates once to warm up, then `--repeats` timed runs, alternating ours and peer
(the machine may be shared); tokens/s = generated tokens (EOS included) / seconds, median.
"""

from __future__ import annotations

import argparse
import importlib.util
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
    median,
    model_folder,
    quiet,
    set_threads,
    write_result,
)
from models import math_prompts

TARGETS = {"hf": 0.8, "vllm": 0.9}
PEERS = {"hf": "raw model.generate", "vllm": "raw vllm LLM.generate"}


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "backend": args.backend,
        # vLLM on CPU runs ~4x slower than HF on this model: half the batch keeps it ~1 min
        "prompts": args.prompts or by_mode(args, 64 if args.backend == "hf" else 32, 32, 4),
        "n": args.n or by_mode(args, 8, 8, 2),
        "new_tokens": args.new_tokens or by_mode(args, 40, 40, 8),
        "repeats": args.repeats or by_mode(args, 7, 2, 1),  # 3 left the median noisy (+-20%)
        "dtype": "bfloat16",
        "threads": args.threads,
        "entropy_topk": args.entropy_topk,
        "temperature": 1.0,
        "top_p": 1.0,
    }


def hf_sides(
    model: Path, s: dict[str, Any], **engine_options: Any
) -> tuple[Callable[[int], int], Callable[[int], int]]:
    """(ours, peer): each generates the batch with a seed and returns the generated tokens; the
    raw model sits on the engine's device (`engine_options`: `HFEngine`'s, e.g. `compile`)."""
    import torch

    from omnisched.model import load_model
    from omnisched.rollout import ENGINES, SamplingParams

    engine = ENGINES.get("hf")(model, dtype=s["dtype"], threads=s["threads"], **engine_options)
    attn = engine.model.config._attn_implementation
    raw, tokenizer = load_model(model, s["dtype"], attn)
    raw.to(engine.device)
    prompts = math_prompts(s["prompts"])

    def ours(seed: int) -> int:
        params = SamplingParams(n=s["n"], max_new_tokens=s["new_tokens"], seed=seed)
        return sum(len(c.token_ids) for g in engine.generate(prompts, params) for c in g)

    @torch.no_grad()
    def peer(seed: int) -> int:
        torch.manual_seed(seed)
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(engine.device)
        out = raw.generate(
            **enc,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=s["new_tokens"],
            num_return_sequences=s["n"],
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        return generated_tokens(out[:, enc["input_ids"].shape[1] :].cpu(), tokenizer.eos_token_id)

    return ours, peer


def generated_tokens(new: Any, eos: int) -> int:
    """Tokens per row up to and including the first EOS (the rest is padding)."""
    is_eos = new == eos
    first = is_eos.int().argmax(dim=1)
    lengths = [int(f) + 1 if bool(row.any()) else new.shape[1] for f, row in zip(first, is_eos)]
    return sum(lengths)


def vllm_sides(model: Path, s: dict[str, Any]) -> tuple[Callable, Callable, Callable, float]:
    """(ours, peer, close, engine start seconds) on one vLLM engine."""
    import vllm

    from omnisched.rollout import ENGINES, SamplingParams

    start = time.perf_counter()
    engine = ENGINES.get("vllm")(
        model, dtype=s["dtype"], threads=s["threads"], entropy_topk=s["entropy_topk"]
    )
    started = time.perf_counter() - start
    prompts = math_prompts(s["prompts"])
    inputs = [
        {"prompt_token_ids": engine.tokenizer.encode(p, add_special_tokens=False)} for p in prompts
    ]

    def ours(seed: int) -> int:
        params = SamplingParams(n=s["n"], max_new_tokens=s["new_tokens"], seed=seed)
        return sum(len(c.token_ids) for g in engine.generate(prompts, params) for c in g)

    def peer(seed: int) -> int:
        sampling = [
            vllm.SamplingParams(
                n=s["n"], temperature=1.0, top_p=1.0, max_tokens=s["new_tokens"], seed=seed + i
            )
            for i in range(len(inputs))
        ]
        outs = engine.llm.generate(inputs, sampling, use_tqdm=False)
        return sum(len(o.token_ids) for out in outs for o in out.outputs)

    return ours, peer, engine.close, started


def measure(ours: Callable[[int], int], peer: Callable[[int], int], repeats: int) -> dict:
    """Warm up each side, then alternate timed runs; median tokens/s of each."""
    ours(0), peer(0)
    rates: dict[str, list[float]] = {"ours": [], "peer": []}
    tokens: dict[str, list[int]] = {"ours": [], "peer": []}
    for r in range(repeats):
        for side, fn in (("ours", ours), ("peer", peer)):
            start = time.perf_counter()
            count = fn(1000 + r)
            rates[side].append(count / (time.perf_counter() - start))
            tokens[side].append(count)
    return {
        "ours_tokens_per_s": median(rates["ours"]),
        "peer_tokens_per_s": median(rates["peer"]),
        "ours_runs": rates["ours"],
        "peer_runs": rates["peer"],
        "ours_tokens": tokens["ours"],
        "peer_tokens": tokens["peer"],
    }


def run(model: Path, s: dict[str, Any]) -> dict[str, Any]:
    if s["backend"] == "hf":
        ours, peer = hf_sides(model, s)
        return measure(ours, peer, s["repeats"])
    ours, peer, close, started = vllm_sides(model, s)
    try:
        return {**measure(ours, peer, s["repeats"]), "vllm_engine_start_s": started}
    finally:
        close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    parser.add_argument("--model", type=Path, help="HF model folder (default: random weights)")
    for flag in ("--prompts", "--n", "--new-tokens", "--repeats"):
        parser.add_argument(flag, type=int, default=None)
    parser.add_argument(
        "--entropy-topk",
        type=int,
        default=20,
        help="vllm: logprobs per step the engine asks for to estimate entropy (0: none)",
    )
    args = parser.parse_args()
    s = settings(args)
    name = f"rollout_{args.backend}"
    if args.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        reason = f"vllm is not installed in {sys.executable}"
        print(f"skipped: {reason}")
        write_result(name, args, [], {"skipped": reason}, settings=s)
        return
    set_threads(args.threads)
    quiet()
    with model_folder(args, "bench-rollout-"):
        details = run(args.model, s)
    fig = Figure(
        f"{args.backend} rollout tokens/s",
        details["ours_tokens_per_s"],
        "tokens/s",
        details["peer_tokens_per_s"],
        PEERS[args.backend],
        TARGETS[args.backend],
        note="engine also returns logprobs + entropies"
        + (
            f" (vLLM: top-{s['entropy_topk']} logprobs per token)" if args.backend == "vllm" else ""
        ),
    )
    write_result(name, args, [fig], details, settings=s)


if __name__ == "__main__":  # vLLM starts worker processes that re-import the main module
    main()
