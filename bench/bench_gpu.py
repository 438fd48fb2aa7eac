"""GPU speed: omnisched's in-process loop vs TRL's GRPOTrainer on one GPU at the Qwen2.5-0.5B shape.

    PYTHONPATH=. python bench/bench_gpu.py [--smoke] [--vocab char,151936] [--compile]
        [--prompts 64 --n 8 --new-tokens 128 --warmup 1 --steps 4 --micro-batch 32]

Models: Qwen2 architecture at the Qwen2.5-0.5B shape (hidden 896, 24 layers, 14 heads, 2 KV
heads, intermediate 4864, tied embeddings), random weights built from config (no download),
once per vocabulary: `char` (the project's char tokenizer, 358M parameters) and 151936 (the char
tokenizer padded with filler tokens to Qwen2.5's vocabulary, 494M). Per vocabulary:
- e2e: omnisched's loop in this process (`ray.enabled: false`, `Controller.run(InlineBackend())`:
  HF engine bf16, torch learner with bf16 autocast, in-place weight sync) and TRL's
  `GRPOTrainer` (no vLLM) on the same model folder, prompts, P prompts x G completions x <= T
  new tokens, temperature 1, top-p 1, no top-k, beta 0, token-mean loss (`dapo`), lr 1e-6 (the
  policy barely moves: both sides sample from the same distribution, so completion lengths stay
  equal on average; both are reported), micro-batch 32, and the same `length` reward (its soft
  limit inside the random model's typical length, so groups carry signal). Steady-state
  samples/s and generated tokens/s after `--warmup` steps.
- rollout: `HFEngine.generate` vs raw `model.generate(top_k=0)` at P x G rows (512).
- learner: its completion tokens/s and 6N x (prompt + completion) tokens/s over the measured
  bf16 matmul peak of the device; with `--deepspeed` (DeepSpeed installed), the same loop with
  the DeepSpeed ZeRO-2 learner (one rank), its learner tokens/s against the torch learner's.
- memory: the process's peak allocated GPU memory during our loop, beside what
  `omnisched.orchestration.memory_plan` plans for the learner step plus the engine's bf16
  weights (the first plan-vs-measured comparison a GPU run gives).
Writes `--out-dir`/gpu.json (default bench/results) after every vocabulary, so a run cut short
keeps what it measured; `bench/gpu_device.sh` is the one script for the lent machine.
Without CUDA (or with --smoke) it runs a tiny shape for a couple
of steps: a check that everything runs, not a measurement. GPU figures need a GPU; the lent
machine lacks pydantic, trl and datasets: see bench/README.md for the wheelhouse.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_e2e import trl_config
from bench_rollout_overhead import hf_sides, measure
from common import Figure, add_common_args, matmul_flops_per_token, quiet, steady_rate, write_result
from loop import steady_stats, train_rows

QWEN05 = {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
          "num_key_value_heads": 2, "intermediate_size": 4864}  # fmt: skip
SMOKE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 1, "intermediate_size": 128}  # fmt: skip
QWEN_VOCAB = 151_936


def settings(args: argparse.Namespace, cuda: bool) -> dict[str, Any]:
    smoke = args.smoke or not cuda
    s = {
        "smoke": smoke,
        "shape": SMOKE if smoke else QWEN05,
        "vocabs": (args.vocab or ("char,4096" if smoke else f"char,{QWEN_VOCAB}")).split(","),
        "prompts": args.prompts or (2 if smoke else 64),
        "n": args.n or (4 if smoke else 8),
        "new_tokens": args.new_tokens or (8 if smoke else 128),
        "warmup": args.warmup or 1,
        "steps": args.steps or (1 if smoke else 4),
        "micro_batch": args.micro_batch or (4 if smoke else 32),
        "repeats": 1 if smoke else 3,
        "lr": 1e-6,
        "compile": args.compile,
        "deepspeed": args.deepspeed,
        "dtype": "bfloat16",
        "threads": args.threads,
    }
    if (s["prompts"] * s["n"]) % s["micro_batch"]:
        raise SystemExit(f"prompts x n must be a multiple of --micro-batch {s['micro_batch']}")
    return s


def tokenizer_for(vocab: str):
    """The char tokenizer, or it padded with filler tokens `x<i>` to `vocab` entries."""
    from transformers import Qwen2Tokenizer

    from omnisched.model import build_char_tokenizer
    from omnisched.model.tokenizer import char_vocab

    tok = build_char_tokenizer()
    if vocab == "char":
        return tok
    table = char_vocab()
    table.update({f"x{i}": i for i in range(len(table), int(vocab))})
    kw = {k: getattr(tok, k) for k in ("pad_token", "bos_token", "eos_token", "unk_token")}
    return Qwen2Tokenizer(vocab=table, merges=[], padding_side="left", **kw)


def build_model(folder: Path, vocab: str, shape: dict[str, int]) -> tuple[Path, Any, int]:
    """A random-weight Qwen2 model folder; (folder, its config, chars per generated token)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = tokenizer_for(vocab)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tok), tie_word_embeddings=True, max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id, **shape,
    )  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    chars = sum(len(tok.decode([i])) for i in range(4, len(tok))) / (len(tok) - 4)
    return folder, config, max(1, round(chars))


def prompt_rows(s: dict[str, Any], chars_per_token: int, count: int) -> list[dict[str, Any]]:
    """Prompts with the `length` reward's columns: a soft limit inside the lengths a random
    model writes (so rewards vary within a group), identical for both sides."""
    limit = chars_per_token * s["new_tokens"]
    return [
        {"prompt": f"Q{i}: write about {'abcdefgh'[i % 8] * (1 + i % 5)}\n>",
         "max_length": limit, "buffer": max(1, (3 * limit) // 4)}
        for i in range(count)
    ]  # fmt: skip


def ours(
    folder: Path, s: dict[str, Any], rows: list[dict], workdir: Path, learner: str = "torch"
) -> dict[str, Any]:
    """omnisched's loop in this process on the model folder (`learner`: torch or deepspeed);
    steady-state rates, peak GPU memory and what the memory plan says for it."""
    import torch

    from omnisched.config import validate_recipe
    from omnisched.orchestration.backend import InlineBackend
    from omnisched.orchestration.controller import Controller

    workdir.mkdir(parents=True, exist_ok=True)
    data, held_out = workdir / "train.jsonl", workdir / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    held_out.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    recipe = validate_recipe(
        {
            "run": {"name": "bench-gpu", "output_dir": str(workdir / "runs"),
                    "threads": s["threads"], "checkpoint_every": 0, "log_rollouts_every": 0},
            "model": {"path": str(folder), "dtype": s["dtype"]},
            "domains": [{"name": "gen", "type": "data", "eval_size": 2,
                         "options": {"path": str(data), "eval_path": str(held_out)},
                         "reward": [{"verifier": "length"}]}],
            "rollout": {"group_size": s["n"], "max_new_tokens": s["new_tokens"],
                        "hf": {"compile": s["compile"]}},
            "learner": {"backend": learner, "lr": s["lr"], "bf16": True,
                        "micro_batch_size": s["micro_batch"], "kl_coef": 0.0,
                        "loss_agg": "token-mean"},
            "schedule": {"policy": "sequential", "steps_per_phase": s["warmup"] + s["steps"],
                         "prompts_per_step": s["prompts"]},
            "eval": {"samples": 1},
            "ray": {"enabled": False},
        },
        source="bench_gpu recipe",
    )  # fmt: skip
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    Controller(recipe, workdir / "run").run(InlineBackend())
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    rows_ = train_rows(workdir / "run")
    stats = steady_stats(rows_, s["warmup"], s["prompts"] * s["n"])
    kept = rows_[s["warmup"] :]
    stats["sync_s"] = sum(r.get("time/sync_s", 0.0) for r in kept) / len(kept)
    stats["learner_tokens_per_s"] = sum(r["learner/tokens_per_s"] for r in kept) / len(kept)
    return {**stats, "run_wall_s": time.perf_counter() - start, "peak_gpu_gib": peak,
            "planned_gib": planned_gib(recipe, folder)}  # fmt: skip


def planned_gib(recipe: Any, folder: Path) -> dict[str, float]:
    """The memory plan's learner step (weights, gradients, optimizer, reference, activations,
    logits) for this recipe, plus the engine's bf16 weights, which this process also holds."""
    from omnisched.orchestration.memory_plan import learner_bytes, shape_from_config

    shape = shape_from_config(json.loads((folder / "config.json").read_text()))
    parts = {k: v / 2**30 for k, v in learner_bytes(recipe, shape).items()}
    parts["engine_weights"] = 2 * shape.params / 2**30
    parts["total"] = sum(parts.values())
    return parts


def trl_side(folder: Path, s: dict[str, Any], rows: list[dict], workdir: Path) -> dict[str, Any]:
    """TRL's GRPOTrainer on the same folder, prompts and reward; steady-state rates."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOTrainer

    import rewards

    cuda = torch.cuda.is_available()
    batch, steps = s["prompts"] * s["n"], s["warmup"] + s["steps"]

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.lengths: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(logs["completions/mean_length"])

    config = trl_config(s, workdir / "trl", s["n"], cuda)
    clock = Clock()
    trainer = GRPOTrainer(
        model=str(folder),
        reward_funcs=[rewards.get("length")],
        args=config,
        train_dataset=Dataset.from_list(rows),
        callbacks=[clock],
    )
    trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    if len(clock.ends) != steps or len(clock.lengths) != steps:
        raise RuntimeError(
            f"TRL ran {len(clock.ends)} steps, {len(clock.lengths)} logs, not {steps}"
        )
    w = s["warmup"]
    return {
        "samples_per_s": steady_rate(clock.ends, [batch] * steps, w),
        "tokens_per_s": steady_rate(clock.ends, [n * batch for n in clock.lengths], w),
        "step_s": (clock.ends[-1] - clock.ends[w - 1]) / (steps - w),
        "completion_len": sum(clock.lengths[w:]) / (steps - w),
        "run_wall_s": wall,
    }


def matmul_peak_bf16(cuda: bool) -> float:
    """Best bf16 FLOP/s of a square matmul on the device (8192 on CUDA, 1024 on CPU)."""
    import torch

    n, device = (8192, "cuda") if cuda else (1024, "cpu")
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(5):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def one_vocab(vocab: str, s: dict[str, Any], peak: float, tmp: Path) -> dict[str, Any]:
    folder, config, chars = build_model(tmp / f"model-{vocab}", vocab, s["shape"])
    rows = prompt_rows(s, chars, s["prompts"] * (s["warmup"] + s["steps"]))
    out: dict[str, Any] = {"vocab_size": config.vocab_size, "chars_per_token": chars}
    out["omnisched"] = ours(folder, s, rows, tmp / f"ours-{vocab}")
    out["trl"] = trl_side(folder, s, rows, tmp / f"trl-{vocab}")
    if s["deepspeed"]:
        out["deepspeed"] = ours(folder, s, rows, tmp / f"ds-{vocab}", learner="deepspeed")
    rollout = {"prompts": s["prompts"], "n": s["n"], "new_tokens": s["new_tokens"]}
    engine, raw = hf_sides(folder, {**rollout, "dtype": s["dtype"], "threads": s["threads"]},
                           compile=s["compile"])  # fmt: skip
    out["rollout"] = measure(engine, raw, s["repeats"])
    o = out["omnisched"]
    prompt_len = sum(len(r["prompt"]) for r in rows) / len(rows)  # chars = char tokens
    seq_tokens_per_s = o["learner_tokens_per_s"] * (1 + prompt_len / max(o["completion_len"], 1))
    flops = 3 * matmul_flops_per_token(config)["dense"] * seq_tokens_per_s  # 6N per token
    out["learner"] = {"tokens_per_s": o["learner_tokens_per_s"], "flops_per_s": flops,
                      "peak_fraction": flops / peak}  # fmt: skip
    return out


def figures(vocab: str, d: dict[str, Any]) -> list[Figure]:
    o, t, r = d["omnisched"], d["trl"], d["rollout"]
    lengths = f"completion length {o['completion_len']:.1f} vs TRL {t['completion_len']:.1f}"
    out = [
        Figure(f"[{vocab}] e2e samples/s", o["samples_per_s"], "samples/s", t["samples_per_s"],
               "TRL GRPOTrainer", 2.0, note=lengths),
        Figure(f"[{vocab}] e2e tokens/s", o["tokens_per_s"], "tokens/s", t["tokens_per_s"],
               "TRL GRPOTrainer", 2.0, note=lengths),
        Figure(f"[{vocab}] HFEngine tokens/s", r["ours_tokens_per_s"], "tokens/s",
               r["peer_tokens_per_s"], "raw model.generate", 1.5),
        Figure(f"[{vocab}] learner share of bf16 peak", d["learner"]["peak_fraction"], "fraction",
               target=0.25, note=f"{d['learner']['tokens_per_s']:.0f} completion tokens/s"),
    ]  # fmt: skip
    if o["peak_gpu_gib"] is not None:
        out.append(Figure(f"[{vocab}] peak GPU memory, our loop", o["peak_gpu_gib"], "GiB",
                          o["planned_gib"]["total"], "memory plan (learner step + engine weights)",
                          higher_is_better=False))  # fmt: skip
    if "deepspeed" in d:
        ds = d["deepspeed"]
        out.append(Figure(f"[{vocab}] DeepSpeed ZeRO-2 learner tokens/s",
                          ds["learner_tokens_per_s"], "tokens/s", o["learner_tokens_per_s"],
                          "torch learner", 0.9))  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--vocab", help="comma-separated: char and/or a vocabulary size")
    parser.add_argument("--compile", action="store_true", help="rollout.hf.compile: true")
    parser.add_argument("--deepspeed", action="store_true", help="also the DeepSpeed learner")
    for flag in ("--prompts", "--n", "--new-tokens", "--warmup", "--steps", "--micro-batch"):
        parser.add_argument(flag, type=int, default=None)
    args = parser.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    s = settings(args, cuda)
    args.smoke = s["smoke"]
    quiet()
    if not cuda:
        torch.set_num_threads(args.threads)
    peak = matmul_peak_bf16(cuda)
    device = torch.cuda.get_device_name() if cuda else "cpu (smoke: not a measurement)"
    details: dict[str, Any] = {"device": device, "bf16_matmul_peak_flops": peak}
    figs: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        for vocab in s["vocabs"]:
            details[vocab] = one_vocab(vocab, s, peak, Path(tmp))
            figs += figures(vocab, details[vocab])
            write_result("gpu", args, figs, details, settings={**s, "device": device})


if __name__ == "__main__":
    main()
