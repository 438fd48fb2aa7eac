"""The --dry-run memory plan: parameter counts against real models and published figures, the
ZeRO, activation and KV-cache arithmetic by hand, and the paper recipe's verdicts."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import PAPER_RECIPE as PAPER
from conftest import ROOT
from typer.testing import CliRunner

from omnisched.cli import app
from omnisched.config import load_recipe
from omnisched.config.schema import Recipe
from omnisched.orchestration.memory_plan import (
    GIB,
    SHAPES,
    Shape,
    learner_bytes,
    memory_plan,
    recipe_shape,
    shape_from_config,
)


def test_parameter_counts_match_real_models_built_from_their_config(tmp_path):
    """Independent count: transformers builds the model from the same config.json."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    configs = [
        (Qwen2Config, Qwen2ForCausalLM, {"tie_word_embeddings": True}),
        (LlamaConfig, LlamaForCausalLM, {"tie_word_embeddings": False, "head_dim": 24}),
    ]
    for config_cls, model_cls, extra in configs:
        config = config_cls(
            vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=96, **extra,
        )  # fmt: skip
        torch.manual_seed(0)
        model = model_cls(config)
        model.save_pretrained(tmp_path / config.model_type)
        saved = json.loads((tmp_path / config.model_type / "config.json").read_text())
        real = sum(p.numel() for p in model.parameters())  # tied weights counted once
        assert shape_from_config(saved).params == real, config.model_type


def test_qwen_shapes_give_the_published_parameter_counts():
    def params(name: str, vocab: int | None = None) -> int:
        h, layers, heads, kv, inter, v, tied = SHAPES[name]
        return Shape(h, layers, heads, kv, inter, vocab or v, tied).params

    assert params("qwen2.5-0.5b") == 494_032_768  # Qwen2.5-0.5B: 0.49B
    assert params("qwen2.5-7b") == 7_615_616_512  # Qwen2.5-7B: 7.61B
    # DESIGN.md: "0.5B shape with the char vocabulary (358M params)", measured on the H200
    assert round(params("qwen2.5-0.5b", vocab=260) / 1e6) == 358


def _recipe(**sections) -> Recipe:
    base = {"domains": [{"name": "m", "type": "math"}]}
    return Recipe.model_validate({**base, **sections})


@pytest.mark.parametrize(
    ("stage", "weights", "gradients", "optimizer"),
    [(0, 2, 2, 12), (1, 2, 2, 3), (2, 2, 0.5, 3), (3, 0.5, 0.5, 3)],  # bytes per P, W = 4
)
def test_zero_stages_shard_what_they_say_over_the_ranks(stage, weights, gradients, optimizer):
    r = _recipe(
        learner={"backend": "deepspeed", "bf16": True, "deepspeed": {"zero_stage": stage}},
        placement={"learner_workers": 4, "learner_gpus_per_worker": 1, "model_shape": "qwen2.5-7b"},
    )
    shape, _ = recipe_shape(r)
    parts = learner_bytes(r, shape)
    p = shape.params
    assert parts["weights"] == weights * p
    assert parts["gradients"] == gradients * p
    assert parts["optimizer"] == optimizer * p
    assert parts["reference"] == 0  # kl_coef 0
    torch_parts = learner_bytes(_recipe(placement={"model_shape": "qwen2.5-7b"}), shape)
    assert (torch_parts["weights"], torch_parts["optimizer"]) == (4 * p, 8 * p)  # fp32 + Adam


def test_activations_logits_and_kv_cache_by_hand():
    r = load_recipe(PAPER, ["learner.micro_batch_size=1"])
    shape, source = recipe_shape(r)  # /models/... does not exist here: the named shape
    assert source == "placement.model_shape qwen2.5-7b"
    parts = learner_bytes(r, shape)
    tokens, completion = 512 + 4096, 4096  # the assumed prompt + max_new_tokens
    h, q, kv, i = 3584, 3584, 512, 18944
    per_layer = 2 * h + 4 * q + 4 * kv + 2 * h + 8 * i + 8 * h  # bf16, fp32 norm inputs
    assert parts["activations"] == tokens * per_layer * 28
    assert parts["logits"] == completion * 152064 * 14
    assert parts["reference"] == 4 * shape.params  # kl_coef 0.001: the fp32 copy
    plan = memory_plan(r)
    kv_per_token = 2 * 28 * (4 // 2) * 128 * 2  # K and V, layers, kv heads per TP-2 shard, bf16
    budget = 0.4 * 140 * GIB
    kv_bytes = budget - 2 * shape.params / 2 - 2 * GIB
    assert plan.engine_gib["kv_tokens"] == int(kv_bytes // kv_per_token)
    assert plan.assumed["step_kv_tokens_per_engine"] == 8 * 128 // 8 * (512 + 4096)


def test_token_budget_and_logits_chunks_set_the_learner_parts():
    r = load_recipe(PAPER, ["learner.micro_batch_tokens=9216", "learner.logits_chunk_tokens=512"])
    shape, _ = recipe_shape(r)
    parts = learner_bytes(r, shape)
    h, q, kv, i = 3584, 3584, 512, 18944
    per_layer = 2 * h + 4 * q + 4 * kv + 2 * h + 8 * i + 8 * h
    assert parts["activations"] == 9216 * per_layer * 28  # the budget, not size x length
    assert parts["logits"] == 512 * 152064 * 14  # one chunk (of the budget's 8192 completion)
    plan = memory_plan(r)
    assert plan.assumed["micro_batch_tokens"] == 9216
    assert plan.assumed["micro_batch_completion_tokens"] == 9216 * 4096 // (512 + 4096)


def _config_only_folder(path, name: str) -> str:
    """A model folder holding only `name`'s published config.json: what `run` asks of
    `model.path` before it starts, and all the dry run's memory plan reads."""
    h, layers, heads, kv, inter, vocab, tied = SHAPES[name]
    config = {
        "model_type": "qwen2", "hidden_size": h, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "intermediate_size": inter,
        "vocab_size": vocab, "tie_word_embeddings": tied, "max_position_embeddings": 32768,
    }  # fmt: skip
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def test_the_paper_recipe_fits_its_h200s_and_not_80_gb_gpus(tmp_path):
    from test_colocation import _paper_overrides

    placeholder = _paper_overrides(tmp_path, "/models/Qwen2.5-7B-Instruct")
    refused = CliRunner().invoke(app, ["run", str(PAPER), *placeholder, "--dry-run"])
    assert refused.exit_code == 2  # as `run` would: no model there
    assert "model.path /models/Qwen2.5-7B-Instruct is not an HF model folder" in refused.output
    model = _config_only_folder(tmp_path / "qwen2.5-7b", "qwen2.5-7b")
    overrides = _paper_overrides(tmp_path, model)
    fits = CliRunner().invoke(app, ["run", str(PAPER), *overrides, "--dry-run"])
    assert fits.exit_code == 0, fits.output
    _, plan = list(yaml.safe_load_all(fits.stdout))
    memory = plan["memory_plan"]
    assert memory["fits"] is True and memory["assumed"]["gpu_memory_gib"] == 140
    assert memory["gpu_gib"]["learner_step"] == pytest.approx(117.7, abs=0.1)
    assert memory["gpu_gib"]["generation"] == pytest.approx(106.76, abs=0.1)
    assert "# memory plan per GPU (GiB of 140): learner step 117.7" in fits.stdout

    small = CliRunner().invoke(
        app, ["run", str(PAPER), *overrides, "placement.gpu_memory_gib=80", "--dry-run"]
    )
    assert small.exit_code == 0  # an estimate: a warning, not a refusal
    assert "DOES NOT FIT" in small.stdout
    lean = ["learner.kl_coef=0", "learner.micro_batch_size=1", "placement.gpu_memory_gib=80"]
    ok = CliRunner().invoke(app, ["run", str(PAPER), *overrides, *lean, "--dry-run"])
    assert "-> fits" in ok.stdout


def test_tiny_recipe_plan_has_no_gpu_verdict():
    plan = memory_plan(load_recipe(ROOT / "recipes/tiny.yaml"))
    assert plan.source == "model.tiny" and plan.fits is None
    assert plan.params == Shape(256, 4, 4, 2, 1024, 260, True).params
