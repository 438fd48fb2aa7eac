"""The learner group: dealing samples to DeepSpeed ranks (pure, hand-worked and exhaustive), the
resume world-size check, and a real `omnisched run` loop with two ZeRO-2 ranks as Ray actors."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from omnisched.config.schema import LearnerConfig, Recipe
from omnisched.errors import OmniError
from omnisched.learner.base import ScoredGroup, TrainSample
from omnisched.learner.batch import train_batch
from omnisched.learner.batching import padded_tokens, plan_micro_batches, seq_len, split_to_count
from omnisched.orchestration.learner_group import check_resume_world_size, deal, merge_metrics


def _sample(completion_len: int, tag: int = 0) -> TrainSample:
    return TrainSample([1, 2, tag], list(range(3, 3 + completion_len)), advantage=0.5 + tag)


def _micro_batches(share: list[TrainSample], size: int) -> int:
    """What `micro_batches` makes of a share: chunks of `size` non-empty completions."""
    return -(-sum(1 for s in share if s.completion_ids) // size)


def _fewest_pads(n: int, ranks: int, size: int) -> int:
    """Independent search: the fewest extra samples after which n + pads splits into `ranks`
    counts that all make the same number (>= 1) of micro-batches."""
    for pads in range(ranks * size):
        total = n + pads
        for m in range(1, total + 1):
            low, high = (m - 1) * size + 1, m * size  # counts that make m micro-batches
            if ranks * low <= total <= ranks * high:
                return pads
    raise AssertionError("unreachable")


def test_deal_hand_worked_example_pads_the_short_rank():
    # 5 samples, 2 ranks, micro-batches of 2: 2 micro-batches per rank needs >= 3 samples each
    lengths = [8, 1, 6, 3, 2]
    samples = [_sample(n, tag=i) for i, n in enumerate(lengths)]
    r0, r1 = deal(samples, ranks=2, micro_batch_size=2)
    # longest first, to the rank with the fewest tokens: 8->r0, 6->r1, 3->r1, 2->r0, 1->r1
    assert [len(s.completion_ids) for s in r0] == [8, 2, 1]
    assert [len(s.completion_ids) for s in r1] == [6, 3, 1]
    pad = r0[-1]
    assert pad.pad and pad.advantage == 0.0 and pad.prompt_ids == samples[1].prompt_ids
    assert pad.completion_ids == samples[1].completion_ids[:1]
    assert r1[-1] is samples[1]


def test_deal_without_pads_balances_counts_and_tokens():
    samples = [_sample(n, tag=i) for i, n in enumerate([9, 9, 5, 4, 4, 3, 2, 2])]
    shares = deal(samples, ranks=2, micro_batch_size=3)
    assert [len(s) for s in shares] == [4, 4]
    assert sorted(map(id, shares[0] + shares[1])) == sorted(map(id, samples))
    tokens = [sum(len(s.completion_ids) for s in share) for share in shares]
    assert tokens == [19, 19]  # 9+5+3+2 and 9+4+4+2


@pytest.mark.parametrize("seed", range(3))
def test_deal_equal_micro_batches_nothing_lost_pads_only_when_needed(seed):
    rng = random.Random(seed)
    for ranks in (1, 2, 3, 4):
        for size in (1, 2, 3, 5):
            for n in range(1, 25):
                lengths = [rng.randint(1, 30) for _ in range(n)] + [0] * rng.randint(0, 2)
                samples = [_sample(k, tag=i) for i, k in enumerate(lengths)]
                shares = deal(samples, ranks, size)
                assert len(shares) == ranks
                counts = {_micro_batches(share, size) for share in shares}
                assert len(counts) == 1 and counts.pop() >= 1, (ranks, size, n)
                dealt = [s for share in shares for s in share]
                real = Counter(id(s) for s in dealt if any(s is x for x in samples))
                assert real == Counter(map(id, samples))  # every sample exactly once
                pads = [s for s in dealt if not any(s is x for x in samples)]
                assert len(pads) == _fewest_pads(n, ranks, size), (ranks, size, n)
                assert all(p.pad and len(p.completion_ids) == 1 for p in pads)
                sizes = [len(share) for share in shares]
                assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("seed", range(3))
def test_deal_by_token_budget_lets_every_rank_run_as_many_micro_batches(seed):
    """Each rank's share, cut by the token budget and halved up to the most any rank makes (as
    `DeepSpeedLearner` does), runs the same number of micro-batches, all within the budget;
    every sample is dealt once, and pads go only to ranks with fewer samples than that."""
    rng = random.Random(seed)
    for ranks in (1, 2, 3, 4):
        for budget in (40, 80, 200):
            for n in range(1, 20):
                lengths = [rng.randint(1, 30) for _ in range(n)] + [0] * rng.randint(0, 2)
                samples = [_sample(k, tag=i) for i, k in enumerate(lengths)]
                shares = deal(samples, ranks, 1, micro_batch_tokens=budget)
                assert len(shares) == ranks
                plans = [plan_micro_batches(share, 1, budget) for share in shares]
                most = max(map(len, plans))
                runs = [split_to_count(plan, most) for plan in plans]  # raises if it cannot
                assert {len(run) for run in runs} == {most}, (ranks, budget, n)
                assert all(padded_tokens(c) <= budget for run in runs for c in run)
                dealt = [s for share in shares for s in share]
                real = Counter(id(s) for s in dealt if any(s is x for x in samples))
                assert real == Counter(map(id, samples))
                for share in shares:
                    pads = [s for s in share if s.pad]
                    assert all(p.advantage == 0.0 and len(p.completion_ids) == 1 for p in pads)
                    if pads:  # exactly enough to make `most` micro-batches
                        assert sum(1 for s in share if s.completion_ids) == most


def test_deal_by_token_budget_hand_worked_example():
    # completions 20, 18, 3, 2, 2 (prompts of 3): lengths 23, 21, 6, 5, 5, budget 30 tokens;
    # tokens balanced over 2 ranks: 23 -> r0, 21 -> r1, 6 -> r1, 5 -> r0, 5 -> r0
    samples = [_sample(n, tag=i) for i, n in enumerate([20, 18, 3, 2, 2])]
    r0, r1 = deal(samples, ranks=2, micro_batch_size=1, micro_batch_tokens=30)
    assert [seq_len(s) for s in r0] == [23, 5, 5] and [seq_len(s) for s in r1] == [21, 6]
    # r0 makes [23], [5, 5] and r1 [21], [6]: two each, no pads
    assert [len(plan_micro_batches(r, 1, 30)) for r in (r0, r1)] == [2, 2]
    # one long sample and four ranks: three ranks get one pad each
    shares = deal([_sample(20)], ranks=4, micro_batch_size=1, micro_batch_tokens=30)
    assert [len(s) for s in shares] == [1, 1, 1, 1] and sum(s[0].pad for s in shares) == 3


def test_deal_refuses_samples_without_completion_tokens():
    with pytest.raises(ValueError, match="non-empty completion"):
        deal([_sample(0), _sample(0)], ranks=2, micro_batch_size=4)


def test_train_batch_leaves_out_tied_groups_unless_kl_but_counts_them():
    groups = [
        ScoredGroup([1, 2], [[3], [4]], [1.0, 0.0]),
        ScoredGroup([5, 6], [[7, 9], [8]], [0.1, 0.1]),  # a tie: zero advantage
    ]
    batch = train_batch(groups, LearnerConfig(scale_advantages=False))
    assert [(s.prompt_ids, s.completion_ids, s.advantage) for s in batch.samples] == [
        ([1, 2], [3], 0.5),
        ([1, 2], [4], -0.5),
    ]
    assert (batch.num_seqs, batch.num_tokens) == (4, 5)  # the normalisers count the tie too
    with_kl = train_batch(groups, LearnerConfig(kl_coef=0.1))
    assert len(with_kl.samples) == 4 and with_kl.samples[2].advantage == 0.0


def test_merge_metrics_counts_real_samples_and_averages_the_rest():
    per_rank = [
        {"loss": 1.0, "grad_norm": 2.0, "tokens": 10.0, "tokens_per_s": 5.0, "step_time_s": 1.0},
        {"loss": 3.0, "grad_norm": 2.0, "tokens": 7.0, "tokens_per_s": 4.0, "step_time_s": 2.0},
    ]
    samples = [_sample(9), _sample(7)]
    merged = merge_metrics(per_rank, samples, pads=1)
    assert merged == {
        "loss": 2.0,
        "grad_norm": 2.0,
        "tokens": 16.0,
        "tokens_per_s": 9.0,
        "step_time_s": 2.0,
        "pad_samples": 1,
        "samples_trained": 2,
    }


def test_resume_with_another_world_size_fails_naming_the_field(tmp_path):
    for r in range(2):
        (tmp_path / f"trainer_state_rank{r}.pt").write_bytes(b"")
    check_resume_world_size(tmp_path, 2)
    with pytest.raises(OmniError, match=r"2 learner rank\(s\) but placement.learner_workers=1"):
        check_resume_world_size(tmp_path, 1)
    single = tmp_path / "single"
    single.mkdir()
    (single / "trainer_state.pt").write_bytes(b"")
    check_resume_world_size(single, 1)
    with pytest.raises(OmniError, match=r"placement\.learner_workers=3; resume with .*=1"):
        check_resume_world_size(single, 3)
    check_resume_world_size(tmp_path / "nothing", 4)  # no trainer state: nothing to restore


def test_learner_ranks_need_the_deepspeed_backend_also_at_dry_run():
    from typer.testing import CliRunner

    from omnisched.cli import app

    tiny = Path(__file__).resolve().parents[1] / "recipes/tiny.yaml"
    result = CliRunner().invoke(app, ["run", str(tiny), "placement.learner_workers=2", "--dry-run"])
    assert result.exit_code == 2
    assert "placement.learner_workers=2 needs learner.backend: deepspeed" in result.stderr
    assert "got learner.backend: torch" in result.stderr and "Traceback" not in result.output
    ok = ["placement.learner_workers=2", "learner.backend=deepspeed", "--dry-run"]
    assert CliRunner().invoke(app, ["run", str(tiny), *ok]).exit_code == 0


def _two_rank_recipe(tmp_path: Path) -> Recipe:
    return Recipe.model_validate(
        {
            "run": {
                "name": "ranks",
                "output_dir": str(tmp_path),
                "threads": 1,
                "checkpoint_every": 1,
            },
            "model": {
                "dtype": "float32",  # the engine's copy compares exactly with the learner's
                "tiny": {
                    "hidden_size": 32,
                    "num_layers": 1,
                    "num_heads": 2,
                    "num_kv_heads": 1,
                    "intermediate_size": 64,
                },
                "warm_start": {
                    "enabled": False,
                    "examples_per_domain": 8,
                    "cache_dir": str(tmp_path / "cache"),
                },
            },
            "domains": [{"name": "creative", "type": "creative", "eval_size": 2}],
            "rollout": {"group_size": 4, "max_new_tokens": 10},
            "learner": {
                "backend": "deepspeed",
                "lr": 1e-2,
                "bf16": False,
                "micro_batch_size": 2,
                "deepspeed": {"zero_stage": 2},
            },
            "schedule": {"policy": "sequential", "steps_per_phase": 3, "prompts_per_step": 3},
            "eval": {"samples": 1},
            "placement": {"learner_workers": 2},
        }
    )


@pytest.mark.slow
def test_two_deepspeed_ranks_train_in_a_ray_run(tmp_path):
    import ray
    import torch
    from transformers import AutoModelForCausalLM

    from omnisched.config.schema import RayConfig
    from omnisched.orchestration.backend import InlineBackend, RayBackend
    from omnisched.orchestration.controller import Controller

    recipe = _two_rank_recipe(tmp_path)

    ray.init(num_cpus=4, include_dashboard=False)
    backend = RayBackend(RayConfig())  # ours: the run's actors outlive the run, to inspect them
    try:
        ctrl = Controller(recipe, tmp_path / "run")
        ctrl.run(backend)
        rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
        train = [r for r in rows if r["kind"] == "train"]
        assert [r["step"] for r in train] == [1, 2, 3]
        assert sum(r["samples_trained"] for r in train) > 0
        assert all("learner/pad_samples" in r for r in train if r["samples_trained"])

        def weights(actor):
            return {k: v.detach().clone() for k, v in actor.learner.model.state_dict().items()}

        ranks = ray.get([w.__ray_call__.remote(weights) for w in ctrl.learner.workers])
        engine = ray.get(
            ctrl.rollout.workers[0].__ray_call__.remote(
                lambda actor: {k: v.clone() for k, v in actor.engine.model.state_dict().items()}
            )
        )
    finally:
        backend.shutdown()  # ends the run's placement group and actors
        ray.shutdown()
    start = AutoModelForCausalLM.from_pretrained(ctrl.model_path).state_dict()
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "run/checkpoints/final").state_dict()
    assert any(not torch.equal(ranks[0][k], start[k]) for k in start)  # it trained
    for name, value in ranks[0].items():
        assert torch.equal(ranks[1][name], value), name  # all-reduced: identical ranks
        assert torch.equal(engine[name], value), name  # the rollout engine got them
        assert torch.equal(final[name], value), name
    ckpts = tmp_path / "run/checkpoints"
    step = ckpts / (ckpts / "latest").read_text().strip()  # the phase-end checkpoint, step 3
    assert sorted(p.name for p in step.glob("trainer_state*")) == [
        "trainer_state_rank0.pt",
        "trainer_state_rank1.pt",
    ]
    one = recipe.placement.model_copy(update={"learner_workers": 1})
    resumed = Controller(
        recipe.model_copy(update={"placement": one}), tmp_path / "run", resume=True
    )
    with pytest.raises(OmniError, match=r"placement\.learner_workers=1; resume with .*=2$"):
        resumed.setup(InlineBackend())  # fails before any model loads
