"""The model folders the benchmarks share, built with omnisched's own builder and warm start.

    .venv/bin/python bench/models.py [--smoke] [--random DIR]

- `sft`: the tiny recipe's model shape (recipes/tiny.yaml `model.tiny`) after a *brief* SFT
  (`omnisched.model.warm_start`, 40 steps of 64 demonstrations from the recipe's four domains,
  instead of the recipe's 300), so the policy answers in the domains' format, stops at EOS and
  scores some rewards (GRPO groups then carry signal). Cached by its settings under
  ~/.cache/omnisched/bench: built once (about a minute on 2 cores), reused by every benchmark.
- `random`: the same shape with random weights (no SFT): completions run to max_new_tokens.
`--smoke` uses a 2-layer, hidden-64 shape and 4 SFT steps.
Prints the SFT model folder (the last line of stdout).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT

from omnisched.config import load_recipe
from omnisched.config.schema import ModelConfig, Recipe, TinyModelConfig

TINY_RECIPE = ROOT / "recipes" / "tiny.yaml"
CACHE = Path("~/.cache/omnisched/bench").expanduser()
SMOKE_SHAPE = TinyModelConfig(  # head_dim 32: a size vLLM's CPU attention supports
    hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128
)
SFT_STEPS = {"full": 40, "smoke": 4}
SFT_BATCH = {"full": 64, "smoke": 16}
DEMO_FRACTION = 0.25  # of each domain's recipe demo count: 40 x 64 steps see ~2.6k of them


def tiny_recipe() -> Recipe:
    return load_recipe(TINY_RECIPE)


def shape(smoke: bool) -> TinyModelConfig:
    return SMOKE_SHAPE if smoke else tiny_recipe().model.tiny


def random_model(folder: Path, smoke: bool = False, seed: int = 0) -> Path:
    """A random-weight model of the bench shape saved as an HF folder (seconds)."""
    from omnisched.model import build_char_tokenizer, build_tiny_model, save_model

    tokenizer = build_char_tokenizer()
    model = build_tiny_model(shape(smoke), tokenizer, seed=seed)
    return save_model(model, tokenizer, Path(folder))


def demonstrations(recipe: Recipe, fraction: float, seed: int) -> list[tuple[str, str]]:
    """The recipe's domains' SFT pairs, `fraction` of each domain's recipe count."""
    from omnisched.domains import build_domain

    rng = random.Random(seed + 1)
    default = recipe.model.warm_start.examples_per_domain
    pairs: list[tuple[str, str]] = []
    for cfg in recipe.domains:
        count = default if cfg.demos is None else cfg.demos
        pairs += build_domain(cfg, seed).demonstrations(rng, max(16, int(count * fraction)))
    return pairs


def sft_model(smoke: bool = False, threads: int = 2, seed: int = 0) -> Path:
    """The briefly warm-started bench model (cached by omnisched's warm-start cache key)."""
    from omnisched.model import warm_start

    recipe = tiny_recipe()
    key = "smoke" if smoke else "full"
    ws = recipe.model.warm_start.model_copy(
        update={"steps": SFT_STEPS[key], "batch_size": SFT_BATCH[key], "cache_dir": CACHE}
    )
    model_cfg = ModelConfig(tiny=shape(smoke), warm_start=ws, dtype=recipe.model.dtype)
    fraction = 0.01 if smoke else DEMO_FRACTION
    return Path(warm_start(model_cfg, demonstrations(recipe, fraction, seed), seed, threads))


def recipe_model(threads: int = 2, seed: int = 0) -> Path:
    """recipes/tiny.yaml's own warm start (300 SFT steps on all its demonstrations), from
    omnisched's warm-start cache: the same key as `omnisched run recipes/tiny.yaml`, so a machine
    that ran the recipe reuses its model; otherwise trained here once (3-5 min on 2 cores)."""
    from omnisched.model import warm_start

    recipe = tiny_recipe()
    return Path(warm_start(recipe.model, demonstrations(recipe, 1.0, seed), seed, threads))


def math_examples(n: int, seed: int = 0) -> list:
    """`n` training examples of the tiny recipe's `math` domain (prompt + `answer` column)."""
    from omnisched.domains import build_domain

    cfg = next(d for d in tiny_recipe().domains if d.name == "math")
    return build_domain(cfg, seed).train_batch(random.Random(seed), n)


def math_prompts(n: int, seed: int = 0) -> list[str]:
    return [ex.prompt for ex in math_examples(n, seed)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--random", type=Path, help="also write a random-weight model here")
    args = parser.parse_args()
    from common import set_threads

    set_threads(args.threads)
    if args.random:
        print(random_model(args.random, args.smoke))
    print(sft_model(args.smoke, args.threads), flush=True)


if __name__ == "__main__":
    main()
