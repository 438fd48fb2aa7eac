"""The benchmark suite's helpers (bench/): figures and ratios, steady-state rates, FLOP
accounting, result files, py-spy summaries, recipes; and one benchmark end to end (--smoke)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
from conftest import bench_smoke

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402
import profiles  # noqa: E402
from common import Figure  # noqa: E402


def test_figure_ratio_and_target_in_both_directions():
    fast = Figure("steps", 30.0, "samples/s", peer=10.0, peer_name="TRL", target=3.0)
    assert fast.ratio == pytest.approx(3.0) and fast.met is True
    slow = Figure("steps", 29.0, "samples/s", peer=10.0, target=3.0)
    assert slow.met is False and "MISSED" in slow.line() and "ratio 2.9x" in slow.line()
    share = Figure("eval share", 0.2, "fraction", target=0.15, higher_is_better=False)
    assert share.ratio is None and share.met is False and "target <= 0.15" in share.line()
    assert Figure("peak", 5.0, "GFLOP/s").met is None
    assert common.figure_from_json(fast.to_json()) == fast


def test_steady_rate_drops_the_warmup_steps():
    ends = [10.0, 11.0, 13.0, 14.0]  # step 1 ends at 10 s (warm-up), then 3 steps in 4 s
    assert common.steady_rate(ends, [8, 8, 8, 8], warmup=1) == pytest.approx(24 / 4)
    assert common.steady_rate(ends, [1, 2, 3, 4], warmup=2) == pytest.approx(7 / 3)
    with pytest.raises(ValueError):
        common.steady_rate(ends, [8] * 4, warmup=4)


def test_matmul_flops_count_every_weight_matrix_once():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=96,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(cfg)
    matrices = sum(p.numel() for p in model.parameters() if p.dim() == 2)  # tied: embedding once
    flops = common.matmul_flops_per_token(cfg)
    assert flops["matmul_params"] == matrices
    assert flops["dense"] == 2 * matrices
    assert common.train_flops(cfg, 10, 5.0, attention=False) == 6 * matrices * 10
    with_attn = common.train_flops(cfg, 10, 5.0, attention=True)
    assert with_attn == 6 * matrices * 10 + 3 * (4 * 2 * 4 * 8) * 5.0 * 10


def test_write_result_writes_figures_settings_and_machine(tmp_path, capsys):
    args = argparse.Namespace(quick=True, smoke=False, threads=2, out_dir=tmp_path)
    figs = [Figure("learner tokens/s", 80.0, "tokens/s", 100.0, "raw loop", 0.8)]
    path = common.write_result("demo", args, figs, {"x": 1})
    data = json.loads(path.read_text())
    assert data["mode"] == "quick" and data["settings"]["threads"] == 2
    assert data["figures"][0]["ratio"] == 0.8 and data["figures"][0]["met"] is True
    assert {"cpu", "logical_cpus", "packages", "date"} <= set(data["machine"])
    assert "learner tokens/s: ours 80" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.tmp"))


def test_pyspy_summary_names_processes_and_actors():
    raw = [
        'process 1:"python bench/x.py";<module> (x.py:3);f (torch/nn/functional.py:9) 6',
        'process 1:"python bench/x.py";process 2:"python /v/site-packages/ray/_private/workers/'
        'default_worker.py --a";main_loop (ray/worker.py:1);RolloutWorker.generate '
        "(omnisched/orchestration/workers.py:5);_forward (omnisched/rollout/hf.py:2) 3",
        'process 1:"python bench/x.py";process 3:"python -c from multiprocessing.forkserver '
        "import main; main(1,",
        '2)";_serve (rewards/workers.py:44) 1',
    ]
    summary = profiles.summarise(profiles.parse(raw))
    assert summary["samples"] == 10
    procs = dict(summary["by_process"])
    assert procs == {
        "x.py": 0.6,
        "ray::RolloutWorker": 0.3,
        "forkserver child (verifier / sandbox)": 0.1,
    }
    assert dict(summary["by_package"]) == {"torch": 0.6, "omnisched": 0.3, "rewards": 0.1}
    assert dict(summary["inclusive"])["RolloutWorker.generate (workers.py)"] == 0.3


def test_bench_recipe_is_the_tiny_recipe_resized(tmp_path):
    from loop import recipe_data

    data = recipe_data(
        tmp_path,
        ["math", "qa"],
        group_size=4,
        prompts=8,
        new_tokens=16,
        steps_per_phase=3,
        threads=1,
        eval_sizes={"qa": 5},
    )
    assert [d["name"] for d in data["domains"]] == ["math", "qa"]
    assert data["domains"][1]["eval_size"] == 5 and data["model"]["path"] == str(tmp_path)
    assert data["rollout"]["group_size"] == 4 and data["schedule"]["prompts_per_step"] == 8
    with pytest.raises(ValueError, match="unknown domain"):
        recipe_data(
            tmp_path,
            ["poetry"],
            group_size=4,
            prompts=8,
            new_tokens=16,
            steps_per_phase=3,
            threads=1,
        )


def test_scaling_points_double_one_axis_at_a_time():
    from bench_scaling import points

    quick = points(argparse.Namespace(smoke=False, quick=True))
    assert quick[0] == {"G": 8, "P": 16, "T": 40, "D": 1}
    assert quick[1:] == [{**quick[0], a: quick[0][a] * 2} for a in ("G", "P", "T", "D")]
    full = points(argparse.Namespace(smoke=False, quick=False))
    assert {"G": 32, "P": 16, "T": 40, "D": 1} in full and {
        "G": 8,
        "P": 16,
        "T": 40,
        "D": 4,
    } in full


def test_learner_benchmark_smoke_run_writes_its_ratio(tmp_path):
    proc = bench_smoke("bench_learner.py", tmp_path, timeout=120)
    data = json.loads((tmp_path / "learner.json").read_text())
    tokens = next(f for f in data["figures"] if f["name"] == "learner tokens/s")
    assert tokens["ours"] > 0 and tokens["peer"] > 0 and tokens["ratio"] > 0
    assert "ratio" in proc.stdout and data["mode"] == "smoke"


def test_gpu_benchmark_runs_its_cpu_smoke_mode_and_writes_both_sides(tmp_path):
    """Without CUDA bench_gpu.py runs a tiny shape: omnisched's in-process loop, TRL's
    GRPOTrainer, the engine vs raw generate and the learner's peak share, all with figures."""
    bench_smoke("bench_gpu.py", tmp_path, "--vocab", "char")
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert data["mode"] == "smoke" and data["settings"]["vocabs"] == ["char"]
    figures = {f["name"]: f for f in data["figures"]}
    for name in ("e2e samples/s", "e2e tokens/s", "HFEngine tokens/s"):
        assert figures[f"[char] {name}"]["ours"] > 0 and figures[f"[char] {name}"]["ratio"] > 0
    assert 0 < figures["[char] learner share of bf16 peak"]["ours"] < 1
    run = data["details"]["char"]
    assert run["omnisched"]["samples_trained"] > 0  # the length reward gave groups signal
    assert 1 <= run["trl"]["completion_len"] <= 8 and run["omnisched"]["sync_s"] > 0


def test_logits_benchmark_smoke_run_agrees_on_the_loss_and_gradients(tmp_path):
    bench_smoke("bench_logits.py", tmp_path, timeout=120)
    data = json.loads((tmp_path / "logits.json").read_text())
    whole, chunked = data["details"]["whole"], data["details"]["chunked"]
    for key in ("loss", "grad_norm_hidden", "grad_norm_head", "mean_entropy"):
        assert chunked[key] == pytest.approx(whole[key], rel=1e-5), key
    assert {f["name"] for f in data["figures"]} >= {"logits peak memory (fwd+bwd)"}
