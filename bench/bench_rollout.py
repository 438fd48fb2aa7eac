"""Rollout throughput: the vLLM engine vs the HF engine on the same model and batch.

    .venv/bin/python bench/bench_rollout.py [--prompts 64 --n 8 --new-tokens 32]
        [--sizes tiny,medium] [--dtype bfloat16] [--threads 2] [--entropy-topk 20]
        [--decode auto|drop|mask]

Models are built from config with random weights (no download): `tiny` (hidden 64, 2 layers,
~0.1M parameters) and `medium` (hidden 768, 8 layers, ~69M). Each engine generates the same
prompts x n samples once to warm up, then once timed; tokens/s counts generated tokens.
Prints both figures and their ratio, and writes bench/results/rollout.json. Without vLLM
installed only the HF engine runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from omnisched.config.schema import TinyModelConfig  # noqa: E402
from omnisched.rollout import SamplingParams  # noqa: E402

SIZES = {  # head_dim 32 / 64: sizes vLLM's CPU attention supports
    "tiny": TinyModelConfig(
        hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128,
        max_position_embeddings=256,
    ),
    "medium": TinyModelConfig(
        hidden_size=768, num_layers=8, num_heads=12, num_kv_heads=4, intermediate_size=3072,
        max_position_embeddings=256,
    ),
}  # fmt: skip


def build(size: str, folder: Path) -> tuple[Path, int]:
    """A random model of `size` saved as an HF folder; returns it and its parameter count."""
    from omnisched.model import build_char_tokenizer, build_tiny_model, save_model

    tokenizer = build_char_tokenizer()
    model = build_tiny_model(SIZES[size], tokenizer, seed=0)
    return save_model(model, tokenizer, folder / size), sum(p.numel() for p in model.parameters())


def throughput(engine, prompts: list[str], params: SamplingParams) -> dict[str, float]:
    engine.generate(prompts[:4], params)  # warm-up: kernels, caches, first-call costs
    start = time.perf_counter()
    groups = engine.generate(prompts, params)
    seconds = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for g in groups for c in g)
    return {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds)}


def run_size(size: str, folder: Path, args: argparse.Namespace, prompts: list[str]) -> dict:
    from omnisched.rollout import ENGINES

    path, n_params = build(size, folder)
    params = SamplingParams(n=args.n, max_new_tokens=args.new_tokens, temperature=1.0, seed=0)
    row: dict = {"size": size, "parameters": n_params, "config": SIZES[size].model_dump()}
    hf = ENGINES.get("hf")(path, dtype=args.dtype, threads=args.threads, decode=args.decode)
    row["hf"] = throughput(hf, prompts, params)
    del hf
    print(f"{size} ({n_params / 1e6:.1f}M): hf {row['hf']['tokens_per_s']} tokens/s", flush=True)
    if importlib.util.find_spec("vllm") is None:
        return row
    start = time.perf_counter()
    engine = ENGINES.get("vllm")(
        path, dtype=args.dtype, threads=args.threads, entropy_topk=args.entropy_topk
    )
    row["vllm_start_s"] = round(time.perf_counter() - start, 1)
    row["vllm"] = throughput(engine, prompts, params)
    engine.close()
    row["vllm_over_hf"] = round(row["vllm"]["tokens_per_s"] / row["hf"]["tokens_per_s"], 3)
    print(
        f"{size}: vllm {row['vllm']['tokens_per_s']} tokens/s (start {row['vllm_start_s']} s), "
        f"vllm/hf = {row['vllm_over_hf']}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--sizes", default="tiny,medium")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--entropy-topk", type=int, default=20)
    parser.add_argument("--decode", default="auto", help="the HF engine's decode loop")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rollout.json")
    args = parser.parse_args()
    prompts = [
        f"Q{i}: copy {'abcdef'[i % 6] * (1 + i % 5)} then stop >" for i in range(args.prompts)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_size(s, Path(tmp), args, prompts) for s in args.sizes.split(",")]
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": settings, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":  # vLLM starts worker processes that re-import the main module
    main()
