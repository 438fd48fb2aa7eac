"""LoRA (`learner.lora`) through peft: only the adapters train, the engines get exactly peft's
merged weights, the KL reference is the base, checkpoints are merged HF folders with the
adapters beside them and resume bit-exactly, bad input is one line naming the field."""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_e2e import ROOT, SMALL
from test_torch_learner import PAD, ragged_samples, tiny_model
from transformers import AutoModelForCausalLM

from omnisched.config import load_recipe
from omnisched.config.lora import LoraConfig
from omnisched.config.schema import DeepSpeedConfig, LearnerConfig, TinyModelConfig
from omnisched.errors import ConfigError
from omnisched.learner import LEARNERS, TorchLearner
from omnisched.learner.base import ScoredGroup
from omnisched.learner.lora import target_problem
from omnisched.model import build_char_tokenizer, build_tiny_model
from omnisched.model.build import save_model
from omnisched.orchestration.workers import LearnerWorker
from omnisched.preflight import check_runnable, lora_target_problem
from omnisched.rollout import HFEngine, SamplingParams

torch.set_num_threads(2)
TINY = TinyModelConfig(
    hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64,
    max_position_embeddings=64,
)  # fmt: skip
LORA = LoraConfig(r=4, alpha=8, dropout=0.1)  # dropout: the resume must restore its RNG too
CFG = LearnerConfig(lr=1e-2, kl_coef=0.05, micro_batch_size=4, lora=LORA)
TOK = build_char_tokenizer()


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("base")
    return str(save_model(build_tiny_model(TINY, TOK, seed=0), TOK, folder))


def scored_groups(seed: int, n: int = 3, size: int = 4) -> list[ScoredGroup]:
    rng = random.Random(seed)
    text = lambda k: "".join(rng.choice("abcdefgh0123456789") for _ in range(k))  # noqa: E731
    return [
        ScoredGroup(
            TOK.encode(text(5)),
            [TOK.encode(text(rng.randint(2, 6))) for _ in range(size)],
            [rng.random() for _ in range(size)],
        )
        for _ in range(n)
    ]


def worker(path: str, cfg: LearnerConfig = CFG, backend: str = "torch") -> LearnerWorker:
    return LearnerWorker(backend, path, cfg, threads=None, seed=0)


def frozen_and_adapters(model: torch.nn.Module) -> tuple[dict, dict]:
    named = {n: p.detach().clone() for n, p in model.named_parameters()}
    adapters = {n: p for n, p in named.items() if ".lora_" in n}
    return {n: p for n, p in named.items() if n not in adapters}, adapters


def test_only_adapters_train_and_engines_get_peft_merged_weights(base_dir, tmp_path):
    w = worker(base_dir)
    frozen, adapters = frozen_and_adapters(w.learner.model)
    first = w.train_groups(scored_groups(1))
    second = w.train_groups(scored_groups(2))
    assert first["kl"] == 0.0  # B starts at 0: the policy is the base, the reference
    assert second["kl"] > 0.0  # the base stayed the reference; the policy moved
    frozen_after, adapters_after = frozen_and_adapters(w.learner.model)
    assert all(torch.equal(frozen[n], frozen_after[n]) for n in frozen)
    assert all(not torch.equal(adapters[n], adapters_after[n]) for n in adapters if "lora_B" in n)
    assert not any(p.requires_grad for n, p in w.learner.model.named_parameters() if n in frozen)

    engine = HFEngine(base_dir, dtype="float32")
    engine.update_weights(w.state_dict())  # what the object store / in-process sync sends
    merged = copy.deepcopy(w.learner.model).merge_and_unload()
    synced = engine.model.state_dict()
    assert set(synced) == set(merged.state_dict())
    assert all(torch.equal(synced[k], v) for k, v in merged.state_dict().items())
    base = AutoModelForCausalLM.from_pretrained(base_dir).state_dict()
    assert not torch.equal(synced["model.layers.0.self_attn.q_proj.weight"], base[
        "model.layers.0.self_attn.q_proj.weight"])  # fmt: skip

    reference = HFEngine(str(save_model(merged, TOK, tmp_path / "merged")), dtype="float32")
    params = SamplingParams(n=4, max_new_tokens=8, seed=3)
    got, want = engine.generate(["ab", "17"], params), reference.generate(["ab", "17"], params)
    assert [[c.token_ids for c in g] for g in got] == [[c.token_ids for c in g] for g in want]


def test_checkpoint_is_a_merged_folder_with_adapters_and_resumes_bit_exactly(base_dir, tmp_path):
    steps = [scored_groups(s) for s in range(3)]
    ckpt = str(tmp_path / "step-2")
    uninterrupted = worker(base_dir)
    for groups in steps[:2]:
        uninterrupted.train_groups(groups)
    uninterrupted.save_checkpoint(ckpt)
    assert (Path(ckpt) / "adapter" / "adapter_config.json").is_file()
    config = json.loads((Path(ckpt) / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(Path(base_dir).resolve())
    loaded = AutoModelForCausalLM.from_pretrained(ckpt).state_dict()  # the merged policy
    state = uninterrupted.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)

    timing = {"step_time_s", "tokens_per_s"}
    # one process, one torch RNG (LoRA dropout draws from it): the uninterrupted run finishes first
    want = [uninterrupted.train_groups(g) for g in steps[2:]]
    resumed = worker(ckpt)  # the base named by the adapters, then the adapters
    assert resumed.load_trainer_state(ckpt)
    got = [resumed.train_groups(g) for g in steps[2:]]
    assert [{k: v for k, v in m.items() if k not in timing} for m in got] == [
        {k: v for k, v in m.items() if k not in timing} for m in want
    ]
    a, b = uninterrupted.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_lora_input_is_one_line_naming_the_field(base_dir):
    recipe = ROOT / "recipes/tiny.yaml"
    for override, needle in [
        ("learner.lora.r=0", "learner.lora.r: Input should be greater than 0"),
        ("learner.lora.alpha=-1", "learner.lora.alpha"),
        ("learner.lora.dropout=1.5", "learner.lora.dropout"),
        ("learner.lora.rank=4", "learner.lora.rank: unknown field"),
        ("learner.lora.target_modules=[]", "learner.lora.target_modules: give module names"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_recipe(recipe, [override])
        assert needle in str(err.value) and "\n" not in str(err.value)
    assert load_recipe(recipe, ["learner.lora={}"]).learner.lora == LoraConfig()

    bad = LearnerConfig(lora=LoraConfig(target_modules=["q_proj", "qkv_proj"]))
    with pytest.raises(ConfigError) as err:
        TorchLearner(tiny_model(), bad, pad_token_id=PAD)
    msg = str(err.value)
    assert msg.startswith("learner.lora.target_modules: ['qkv_proj'] match no module")
    assert "q_proj, up_proj, v_proj" in msg and "\n" not in msg
    assert target_problem(base_dir, LoraConfig(target_modules=r".*\.(q|v)_proj")) is None
    assert target_problem(TINY, LoraConfig(target_modules=["q_proj", "mlp.down_proj"])) is None


def test_run_and_dry_run_check_lora_targets_before_anything_starts(base_dir):
    """`check_runnable` (both `run` and `--dry-run`) builds the model of `model.path`, or the tiny
    model of `model.tiny`, on the meta device in a child process: the driver imports no torch."""
    recipe = ROOT / "recipes/tiny.yaml"
    folder = load_recipe(
        recipe, ["learner.lora.target_modules=attn\\.c_attn", f"model.path={base_dir}"]
    )
    with pytest.raises(ConfigError, match=r"^learner.lora.target_modules: \['attn\\\\.c_attn'\]"):
        check_runnable(folder)
    tiny = load_recipe(recipe, ["learner.lora.target_modules=[q_proj, qkv_proj]"])
    problem = lora_target_problem(tiny)
    assert problem.startswith("learner.lora.target_modules: ['qkv_proj'] match no module")
    assert lora_target_problem(load_recipe(recipe, ["learner.lora={}"])) is None  # all-linear
    assert lora_target_problem(load_recipe(recipe)) is None  # no LoRA


@pytest.mark.slow
def test_deepspeed_lora_step_trains_the_adapters_and_hands_back_merged_weights(tmp_path):
    model = tiny_model()
    base = copy.deepcopy(model).state_dict()
    cfg = LearnerConfig(
        lr=1e-2, bf16=False, deepspeed=DeepSpeedConfig(zero_stage=2), lora=LoraConfig(r=4)
    )
    learner = LEARNERS.get("deepspeed")(model, cfg, pad_token_id=PAD)
    metrics = learner.train_step(ragged_samples())
    assert metrics["grad_norm"] > 0
    state = learner.state_dict()
    assert set(state) == set(base)
    peft_model = learner.model
    scale = cfg.lora.alpha / cfg.lora.r
    for name, module in peft_model.get_base_model().named_modules():
        if hasattr(module, "lora_A"):  # W + B @ A * alpha / r, computed here independently
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            want = base[f"{name}.weight"] + (b @ a).detach() * scale
            assert torch.allclose(state[f"{name}.weight"], want, atol=1e-6), name
            assert not torch.equal(state[f"{name}.weight"], base[f"{name}.weight"]), name
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        assert torch.equal(state[name], base[name])  # not adapted: untouched
    learner.save(tmp_path / "ds")
    assert (tmp_path / "ds/adapter/adapter_model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ds").state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


@pytest.mark.slow
def test_omnisched_run_with_lora_trains_only_the_adapted_layers(tmp_path):
    def run(*extra: str) -> subprocess.CompletedProcess:
        # the random tiny model (no warm start): the creative rubric still ranks its samples
        overrides = [
            *SMALL, "ray.enabled=false", "model.warm_start.enabled=false", "schedule.phases=1",
            "schedule.policy=joint", "schedule.steps_per_phase=3", "eval.samples=1",
            *(f"domains.{i}.eval_size=2" for i in range(4)), "learner.lr=1e-3",
            f"run.output_dir={tmp_path / 'runs'}", f"model.warm_start.cache_dir={tmp_path}/c",
            *extra,
        ]  # fmt: skip
        cmd = [sys.executable, "-m", "omnisched.cli", "run", str(ROOT / "recipes/tiny.yaml")]
        return subprocess.run(
            [*cmd, "--quiet", *overrides], capture_output=True, text=True, timeout=300, cwd=tmp_path
        )

    done = run("learner.lora.r=8", "learner.lora.alpha=16")
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert sum(r["samples_trained"] for r in train) > 0
    final = run_dir / "checkpoints/final"
    adapter = json.loads((final / "adapter/adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (8, 16)
    start = AutoModelForCausalLM.from_pretrained(adapter["base_model_name_or_path"]).state_dict()
    trained = AutoModelForCausalLM.from_pretrained(final).state_dict()
    moved = [k for k in start if not torch.equal(start[k], trained[k])]
    assert moved and all(k.endswith("proj.weight") for k in moved)  # only adapted layers
