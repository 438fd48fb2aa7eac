"""The group sampler with real engines and reward workers (inline): whole groups with one id per
draw, and DAPO's dynamic sampling refilling the batch with groups that carry signal."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

import judges
from judges import Verdict
from omnisched.config.schema import Recipe
from omnisched.domains import build_domain
from omnisched.learner.batch import train_batch
from omnisched.orchestration.backend import InlineBackend
from omnisched.orchestration.reward_pool import reward_pool
from omnisched.orchestration.rollout_pool import RolloutPool
from omnisched.orchestration.sampler import GroupSampler


class PromptRuleJudge:
    """Scores vary with the completion for prompts that start with "vary"; every other prompt's
    completions tie. Records the group ids it was given."""

    seen: ClassVar[list[list[str]]] = []

    def judge(self, prompts: Sequence[str], completions: Sequence[str], **columns: Any):
        PromptRuleJudge.seen.append(list(columns["group_id"]))
        return [
            Verdict((sum(map(ord, c)) % 7) / 6 if p.startswith("vary") else 0.5)
            for p, c in zip(prompts, completions)
        ]


if "prompt_rule" not in judges.JUDGES:
    judges.JUDGES.add("prompt_rule", PromptRuleJudge)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    from omnisched.config.schema import TinyModelConfig
    from omnisched.model import build_char_tokenizer, build_tiny_model, save_model

    tok = build_char_tokenizer()
    cfg = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1)
    root = tmp_path_factory.mktemp("m")
    return str(save_model(build_tiny_model(cfg, tok, seed=0), tok, root))


def make(tmp_path: Path, model: str, prompts: list[str], **rollout: Any) -> GroupSampler:
    data, held_out = tmp_path / "d.jsonl", tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    held_out.write_text(json.dumps({"prompt": "held out"}) + "\n")
    recipe = Recipe.model_validate(
        {
            "model": {"path": model},
            "domains": [
                {
                    "name": "d",
                    "type": "data",
                    "eval_size": 1,
                    "options": {"path": str(data), "eval_path": str(held_out)},
                    "reward": [{"judge": "prompt_rule"}],
                }
            ],
            "rollout": {"group_size": 4, "max_new_tokens": 4, **rollout},
            "schedule": {"prompts_per_step": 4},
            "ray": {"enabled": False},
        }
    )
    domains = {d.name: build_domain(d, 0) for d in recipe.domains}
    backend = InlineBackend()
    rollout_pool = RolloutPool(backend, recipe, model, [None])
    rewards = reward_pool(backend, recipe, domains, [None])
    return GroupSampler(recipe, domains, random.Random(0), rollout_pool, rewards)


def test_the_same_prompt_drawn_twice_is_two_groups_with_their_own_advantages(tmp_path, model):
    PromptRuleJudge.seen.clear()
    sampler = make(tmp_path, model, ["vary a"])  # one training prompt, drawn 4 times
    batch = sampler.sample(["d"], None, step=7)
    assert [g.example.prompt for g in batch.groups] == ["vary a"] * 4
    ids = [g.group_id for g in batch.groups]
    assert len(set(ids)) == 4 and all(i.startswith("7.") for i in ids)
    # the judge saw the group id of each completion, 4 per group
    assert PromptRuleJudge.seen[-1] == [i for i in ids for _ in range(4)]
    # advantages are centred within each group, not over the pooled prompt
    keep_all = sampler.recipe.learner.model_copy(update={"kl_coef": 0.1})  # no sample left out
    tb = train_batch([g.scored() for g in batch.groups], keep_all)
    assert len(tb.samples) == 16
    per_group = [tb.samples[4 * k : 4 * k + 4] for k in range(4)]
    assert all(abs(sum(s.advantage for s in group)) < 1e-5 for group in per_group)
    pooled = [r for g in batch.groups for r in g.rewards]
    assert any(  # a group mean that differs from the pooled mean: per-group centring matters
        abs(sum(g.rewards) / 4 - sum(pooled) / len(pooled)) > 1e-3 for g in batch.groups
    )


def test_dynamic_sampling_refills_the_batch_with_groups_that_carry_signal(tmp_path, model):
    prompts = [f"tie {i}" for i in range(6)] + [f"vary {i}" for i in range(6)]
    plain = make(tmp_path, model, prompts).sample(["d"], None, step=0)
    assert len(plain.groups) == 4 and any(not g.has_signal for g in plain.groups)
    assert "dynamic/filtered_frac" not in plain.metrics(["d"])

    sampler = make(tmp_path, model, prompts, dynamic_sampling={"enabled": True, "max_rounds": 8})
    batch = sampler.sample(["d"], None, step=0)
    assert len(batch.groups) == 4 and all(g.has_signal for g in batch.groups)
    assert batch.rounds > 1 and len(batch.drawn) > 4
    m = batch.metrics(["d"])
    no_signal = sum(not g.has_signal for g in batch.drawn)
    assert m["dynamic/filtered_frac"] == pytest.approx(no_signal / len(batch.drawn))
    assert m["dynamic/extra_rounds"] == batch.rounds - 1
    assert m["dynamic/extra_prompts"] == len(batch.drawn) - 4
    assert m["prompts/d"] == len(batch.drawn)  # accounting counts what was drawn
    assert len({g.group_id for g in batch.drawn}) == len(batch.drawn)


def test_dynamic_sampling_stops_at_its_round_cap(tmp_path, model):
    prompts = [f"tie {i}" for i in range(4)]  # no group ever carries signal
    sampler = make(tmp_path, model, prompts, dynamic_sampling={"enabled": True, "max_rounds": 2})
    batch = sampler.sample(["d"], None, step=0)
    assert batch.rounds == 3 and len(batch.drawn) == 12  # 4 drawn, then 4 more per extra round
    assert batch.metrics(["d"])["dynamic/filtered_frac"] == 1.0
    assert len(batch.groups) == 4  # what it has: nothing with signal, so no gradient either


def test_domain_weights_split_a_mixed_phase(tmp_path, model):
    sampler = make(tmp_path, model, ["vary a"])
    sampler.weights = {"a": 3.0, "b": 1.0}
    picks = sampler.draw(["a", "b"], None, 8, "t")
    assert sorted(d for _, d in picks) == ["a"] * 6 + ["b"] * 2
    assert sorted(d for _, d in sampler.draw(["a", "b"], {"a": 0.5, "b": 0.5}, 8, "t")) == [
        *["a"] * 4,
        *["b"] * 4,
    ]  # an online policy's mixture wins
    sampler.weights = {"a": 1.0, "b": 1.0}
    assert sorted(d for _, d in sampler.draw(["a", "b"], None, 4, "t")) == ["a", "a", "b", "b"]
