"""Per-GPU memory plan of a recipe (`omnisched run --dry-run`): will it fit, and why.

Pure arithmetic on the model's shape (its config.json, `placement.model_shape`, or `model.tiny`)
and the recipe, every assumption printed with the numbers. Bytes per parameter P:

- learner, DeepSpeed with bf16: weights 2, gradients 2, optimizer 12 (fp32 master + Adam m, v);
  otherwise (torch learner: fp32 weights under autocast) 4, 4, 8 (Adam m, v). ZeRO shards over
  the W ranks: stage >= 1 the optimizer, >= 2 the gradients, 3 the weights (each / W);
  `offload_optimizer` moves the optimizer to CPU. The KL reference (`kl_coef > 0`) is an
  unsharded fp32 copy (4 P) on every rank (`learner.step.frozen_reference`).
- activations, per token of a micro-batch and per layer, bf16 autocast, SwiGLU, no dropout,
  SDPA (no attention scores kept): 2h (attention input) + 4q + 4kv (q, k, v, attention output)
  + 2h + 8i (MLP input; gate, up, SiLU, product) + 8h (both RMSNorm inputs, fp32) bytes; twice
  the 16-bit part in fp32. With gradient checkpointing: 2h per layer plus one layer's full set.
- logits, per completion token: vocab x 14 bytes (bf16 logits, their fp32 copy, the
  temperature-scaled copy and the entropy's probabilities), per `learner.logits_chunk_tokens`
  tokens when that is set.
- vLLM: it takes `gpu_memory_utilization` of the GPU: its weights (2 P / tensor_parallel) and a
  KV cache of 2 (K, V) x layers x kv_heads x head_dim x 2 bytes per token (kv heads split over
  the shards), after ENGINE_RESERVE_GIB for its activations and graphs.
- every process on a GPU: CUDA_CONTEXT_GIB (CUDA context, NCCL buffers).

Colocated: a GPU holds a learner rank and engine shards; its peak is the larger of the learner
step (the engines asleep: level >= 1 frees their memory, level 0 keeps all of it) and the
generation (the learner's weights, gradients, optimizer and reference stay).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omnisched.config.schema import Recipe
from omnisched.orchestration.engine_plan import gpu_memory_utilization, sleep_level

GIB = float(1 << 30)
ASSUMED_PROMPT_TOKENS = 512  # prompts are data: the plan assumes this many tokens per prompt
LOGIT_BYTES = 14
CUDA_CONTEXT_GIB = 1.0
ENGINE_RESERVE_GIB = 2.0
CHAR_VOCAB = 260  # the tiny model's char tokenizer: 4 specials + 256 bytes
CHAT_VOCAB = 512  # model.tiny.tokenizer: chat (omnisched.model.chat_model's default size)
# Public config.json fields of the Qwen2.5 models (hidden, layers, heads, kv heads, MLP, vocab,
# tied embeddings).
SHAPES: dict[str, tuple[int, int, int, int, int, int, bool]] = {
    "qwen2.5-0.5b": (896, 24, 14, 2, 4864, 151936, True),
    "qwen2.5-1.5b": (1536, 28, 12, 2, 8960, 151936, True),
    "qwen2.5-3b": (2048, 36, 16, 2, 11008, 151936, True),
    "qwen2.5-7b": (3584, 28, 28, 4, 18944, 152064, False),
    "qwen2.5-14b": (5120, 48, 40, 8, 13824, 152064, False),
    "qwen2.5-32b": (5120, 64, 40, 8, 27648, 152064, False),
    "qwen2.5-72b": (8192, 80, 64, 8, 29568, 152064, False),
}


@dataclass(frozen=True)
class Shape:
    """What the plan needs of a decoder-only transformer (Qwen2 / Llama layout)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    head_dim: int = 0  # 0: hidden // heads
    qkv_bias: bool = True  # Qwen2 has q, k, v biases; Llama none
    max_positions: int | None = None

    @property
    def q_dim(self) -> int:
        return self.heads * (self.head_dim or self.hidden // self.heads)

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.head_dim or self.hidden // self.heads)

    @property
    def params(self) -> int:
        """Embedding (+ untied LM head) + per layer (q, k, v, o, gate, up, down, 2 norms) + norm."""
        h, q, kv = self.hidden, self.q_dim, self.kv_dim
        attention = h * q + 2 * h * kv + q * h + (q + 2 * kv if self.qkv_bias else 0)
        layer = attention + 3 * h * self.intermediate + 2 * h
        return self.vocab * h * (1 if self.tied else 2) + self.layers * layer + h


def shape_from_config(config: dict[str, Any]) -> Shape:
    """The shape of an HF `config.json` (Qwen2, Llama, Mistral field names)."""
    return Shape(
        hidden=config["hidden_size"],
        layers=config["num_hidden_layers"],
        heads=config["num_attention_heads"],
        kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
        intermediate=config["intermediate_size"],
        vocab=config["vocab_size"],
        tied=bool(config.get("tie_word_embeddings", False)),
        head_dim=config.get("head_dim") or 0,
        qkv_bias=config.get("attention_bias", config.get("model_type") == "qwen2"),
        max_positions=config.get("max_position_embeddings"),
    )


def recipe_shape(recipe: Recipe) -> tuple[Shape | None, str]:
    """The model's shape and where it came from: model.path's config.json, else
    `placement.model_shape`, else `model.tiny` (no path); None when none says."""
    path = recipe.model.path
    if path is not None and (Path(path) / "config.json").is_file():
        config = json.loads((Path(path) / "config.json").read_text())
        return shape_from_config(config), f"{path}/config.json"
    name = recipe.placement.model_shape
    if name is not None:
        h, layers, heads, kv, inter, vocab, tied = SHAPES[name]
        return Shape(h, layers, heads, kv, inter, vocab, tied), f"placement.model_shape {name}"
    if path is None:
        t = recipe.model.tiny
        shape = Shape(
            t.hidden_size, t.num_layers, t.num_heads, t.num_kv_heads, t.intermediate_size,
            CHAR_VOCAB if t.tokenizer == "char" else CHAT_VOCAB, True,
            max_positions=t.max_position_embeddings,
        )  # fmt: skip
        return shape, "model.tiny"
    return None, f"{path} has no config.json and placement.model_shape is not set"


def learner_bytes(recipe: Recipe, shape: Shape) -> dict[str, float]:
    """One learner rank's GPU memory by part, in bytes (module docstring)."""
    lc, pl = recipe.learner, recipe.placement
    p, world = shape.params, pl.learner_workers
    deepspeed = lc.backend == "deepspeed"
    bf16 = lc.bf16 is True or (lc.bf16 == "auto" and pl.learner_gpus_per_worker > 0)
    stage = lc.deepspeed.zero_stage if deepspeed else 0
    w, g, o = (2, 2, 12) if deepspeed and bf16 else (4, 4, 8)
    if deepspeed and lc.deepspeed.offload_optimizer:
        o = 0
    tokens, completion = micro_batch_tokens(recipe, shape)
    h, q, kv, i = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
    half = 2 * h + 4 * q + 4 * kv + 2 * h + 8 * i  # the 16-bit activations; + fp32 norm inputs
    per_layer = (half if bf16 else 2 * half) + 8 * h
    if getattr(lc, "gradient_checkpointing", False):
        activations = tokens * (2 * h * shape.layers + per_layer)
    else:
        activations = tokens * per_layer * shape.layers
    chunk = lc.logits_chunk_tokens or completion
    return {
        "weights": w * p / (world if stage == 3 else 1),
        "gradients": g * p / (world if stage >= 2 else 1),
        "optimizer": o * p / (world if stage >= 1 else 1),
        "reference": 4.0 * p if lc.kl_coef > 0 else 0.0,
        "activations": float(activations),
        "logits": float(min(chunk, completion) * shape.vocab * LOGIT_BYTES),
        "context": CUDA_CONTEXT_GIB * GIB,
    }


def micro_batch_tokens(recipe: Recipe, shape: Shape) -> tuple[int, int]:
    """(all tokens, completion tokens) of one micro-batch: `learner.micro_batch_tokens` when
    set, else micro_batch_size sequences of ASSUMED_PROMPT_TOKENS + rollout.max_new_tokens
    (capped by the model's positions)."""
    new = recipe.rollout.max_new_tokens
    seq = ASSUMED_PROMPT_TOKENS + new
    if shape.max_positions:
        seq = min(seq, shape.max_positions)
    tokens = recipe.learner.micro_batch_tokens or recipe.learner.micro_batch_size * seq
    return tokens, math.ceil(tokens * min(new, seq) / seq)


def engine_bytes(recipe: Recipe, shape: Shape) -> dict[str, float]:
    """One engine shard's GPU memory (bytes) and its KV cache's capacity (tokens)."""
    ro = recipe.rollout
    tp = ro.tensor_parallel if ro.backend == "vllm" else 1
    budget = gpu_memory_utilization(recipe) * recipe.placement.gpu_memory_gib * GIB
    if ro.backend != "vllm":  # the HF engine: bf16 weights and a cache per call
        return {"weights": 2.0 * shape.params, "budget": 2.0 * shape.params, "kv_tokens": 0.0}
    weights = 2.0 * shape.params / tp
    head_dim = shape.kv_dim // shape.kv_heads
    per_token = 2 * shape.layers * max(1, shape.kv_heads // tp) * head_dim * 2
    kv = max(0.0, budget - weights - ENGINE_RESERVE_GIB * GIB)
    return {"weights": weights, "budget": budget, "kv_cache": kv, "kv_tokens": kv // per_token}


@dataclass(frozen=True)
class MemoryPlan:
    source: str
    params: int
    learner_gib: dict[str, float]
    engine_gib: dict[str, float]
    gpu_gib: dict[str, float]
    assumed: dict[str, Any]
    fits: bool | None  # None: nothing runs on a GPU

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def memory_plan(recipe: Recipe) -> MemoryPlan | None:
    """The plan (module docstring), or None when the model's shape is unknown."""
    shape, source = recipe_shape(recipe)
    if shape is None:
        return None
    ro, pl = recipe.rollout, recipe.placement
    learner = learner_bytes(recipe, shape)
    engine = engine_bytes(recipe, shape)
    level = sleep_level(recipe)
    step = sum(learner.values())
    resident = sum(
        learner[k] for k in ("weights", "gradients", "optimizer", "reference", "context")
    )
    gpu: dict[str, float] = {}
    if pl.colocate:
        asleep = CUDA_CONTEXT_GIB * GIB if level else engine["budget"] + CUDA_CONTEXT_GIB * GIB
        gpu["learner_step"] = step + asleep
        gpu["generation"] = resident + engine["budget"] + CUDA_CONTEXT_GIB * GIB
    else:
        if pl.learner_gpus_per_worker > 0:
            gpu["learner_gpu"] = step
        if ro.gpus_per_worker > 0:
            gpu["engine_gpu"] = engine["budget"] + CUDA_CONTEXT_GIB * GIB
    fits = None
    if gpu:
        gpu["peak"] = max(gpu.values())
        fits = gpu["peak"] <= pl.gpu_memory_gib * GIB
        if ro.backend == "vllm" and ro.gpus_per_worker > 0:  # its weights must fit its share
            fits = fits and engine["weights"] + ENGINE_RESERVE_GIB * GIB <= engine["budget"]
    tokens, completion = micro_batch_tokens(recipe, shape)
    sequences = ro.group_size * recipe.schedule.prompts_per_step / ro.num_workers
    assumed = {
        "prompt_tokens": ASSUMED_PROMPT_TOKENS,
        "micro_batch_tokens": tokens,
        "micro_batch_completion_tokens": completion,
        "gpu_memory_gib": pl.gpu_memory_gib,
        "gpu_memory_utilization": gpu_memory_utilization(recipe),
        "sleep_level": level,
        "step_kv_tokens_per_engine": int(sequences * (ASSUMED_PROMPT_TOKENS + ro.max_new_tokens)),
        "shape": asdict(shape),
    }
    return MemoryPlan(source, shape.params, _gib(learner), _gib(engine), _gib(gpu), assumed, fits)


def _gib(parts: dict[str, float]) -> dict[str, float]:
    return {k: (int(v) if k == "kv_tokens" else round(v / GIB, 2)) for k, v in parts.items()}


def render_plan(plan: MemoryPlan | None, reason: str = "") -> list[str]:
    """The plan in a few lines (the dry run prints them as comments above the numbers)."""
    if plan is None:
        return [f"memory plan: unknown model shape ({reason})"]
    gpu, a = plan.gpu_gib, plan.assumed
    verdict = {None: "no GPUs", True: "fits", False: "DOES NOT FIT"}[plan.fits]
    phases = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in gpu.items() if k != "peak")
    lines = [
        f"memory plan per GPU (GiB of {a['gpu_memory_gib']:g}): {phases or '-'} -> {verdict}",
        f"  model: {plan.params / 1e9:.3g}B parameters ({plan.source})",
        "  learner rank: " + ", ".join(f"{k} {v:g}" for k, v in plan.learner_gib.items()),
    ]
    e = plan.engine_gib
    if "kv_cache" in e:
        share = f"{e['budget']:g} (gpu_memory_utilization {a['gpu_memory_utilization']:g})"
        kv = f"KV cache {e['kv_cache']:g} = {e['kv_tokens']:,} tokens"
        need = f"a step's sequences need {a['step_kv_tokens_per_engine']:,}"
        lines.append(f"  vLLM shard: {share}: weights {e['weights']:g}, {kv} ({need})")
    lines.append(
        f"  assumed: {a['prompt_tokens']} prompt tokens, {a['micro_batch_tokens']:,} tokens per "
        f"micro-batch, sleep_level {a['sleep_level']} (omnisched.orchestration.memory_plan)"
    )
    return lines
