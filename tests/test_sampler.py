"""The group sampler with real engines and reward workers (inline): whole groups with one id per
draw, DAPO's dynamic sampling refilling the batch with groups that carry signal, the step's
reward metrics, and what a verifier failing past `reward.max_error_rate` leaves behind (in
training steps and in evaluations)."""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

import judges
import rewards
from judges import Verdict
from omnisched.config.schema import Recipe, RewardComponent
from omnisched.domains import Example, build_domain
from omnisched.learner.batch import train_batch
from omnisched.metrics import MetricsLogger
from omnisched.metrics.logger import read_metrics
from omnisched.orchestration.backend import InlineBackend
from omnisched.orchestration.evaluator import Evaluator
from omnisched.orchestration.groups import Group
from omnisched.orchestration.pipeline import StepRunner
from omnisched.orchestration.reward_pool import RewardPool, reward_pool
from omnisched.orchestration.rollout_pool import RolloutPool
from omnisched.orchestration.sampler import GroupSampler, RewardFailure, RolloutBatch
from omnisched.rollout.base import Completion


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


# Verifiers at module level, so the reward workers' processes can import them.
def none_for_b(completions: list[str], **_: object) -> list[float | None]:
    """1 for "a", None ("does not apply", TRL) for "b", else 0."""
    return [None if c == "b" else float(c == "a") for c in completions]


def fails_on_bad_prompts(completions: list[str], prompts: list[str], **_: object) -> list[float]:
    """Raises on prompts that start with "bad"; elsewhere a score that varies with the text."""
    if prompts[0].startswith("bad"):
        raise ValueError("no parser for this prompt")
    return [(sum(map(ord, c)) % 7) / 6 for c in completions]


rewards.VERIFIERS.add("sampler_none_for_b", none_for_b, replace=True)
rewards.VERIFIERS.add("test_fails_on_bad", fails_on_bad_prompts, replace=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    from omnisched.config.schema import TinyModelConfig
    from omnisched.model import build_char_tokenizer, build_tiny_model, save_model

    tok = build_char_tokenizer()
    cfg = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1)
    root = tmp_path_factory.mktemp("m")
    return str(save_model(build_tiny_model(cfg, tok, seed=0), tok, root))


def make(
    tmp_path: Path,
    model: str,
    prompts: list[str],
    held_out: tuple[str, ...] = ("held out",),
    reward: list[dict] | None = None,
    recipe: dict | None = None,
    **rollout: Any,
) -> GroupSampler:
    """A sampler over one data domain `d` of `prompts` (eval set: `held_out`) with the
    `prompt_rule` judge, or `reward`; `recipe` adds top-level sections."""
    data, eval_data = tmp_path / "d.jsonl", tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    eval_data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in held_out))
    recipe = Recipe.model_validate(
        {
            "model": {"path": model},
            "domains": [
                {
                    "name": "d",
                    "type": "data",
                    "eval_size": len(held_out),
                    "options": {"path": str(data), "eval_path": str(eval_data)},
                    "reward": reward or [{"judge": "prompt_rule"}],
                }
            ],
            "rollout": {"group_size": 4, "max_new_tokens": 4, **rollout},
            "schedule": {"prompts_per_step": 4},
            "ray": {"enabled": False},
            **(recipe or {}),
        }
    )
    domains = {d.name: build_domain(d, 0) for d in recipe.domains}
    backend = InlineBackend()
    rollout_pool = RolloutPool(backend, recipe, model, [None])
    workers = reward_pool(backend, recipe, domains, [None])
    return GroupSampler(recipe, domains, random.Random(0), rollout_pool, workers)


def read_rollouts(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]


def learner_advantages(rewards: list[float], scale: bool) -> list[float]:
    """The learner's own advantages for one group (`grpo.group_advantages`)."""
    import torch

    from omnisched.learner.grpo import group_advantages

    return group_advantages(torch.tensor([rewards]), scale=scale)[0].tolist()


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

    # on, with nothing to filter: logged all the same, as zeros, so averages over steps are right
    varied = [f"vary {i}" for i in range(6)]
    sampler = make(tmp_path, model, varied, dynamic_sampling={"enabled": True, "max_rounds": 8})
    calm = sampler.sample(["d"], None, step=0)
    assert calm.rounds == 1 and all(g.has_signal for g in calm.drawn)
    m = calm.metrics(["d"])
    assert m["dynamic/filtered_frac"] == 0.0
    assert m["dynamic/extra_rounds"] == m["dynamic/extra_prompts"] == 0


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


def hand_group(gid: str, domain: str, texts: list[str]) -> Group:
    example = Example(gid, "p", {"answer": "a"})
    return Group(gid, domain, example, [Completion("p", t, [0], [1]) for t in texts])


def test_a_component_that_does_not_apply_is_left_out_of_its_mean():
    """A verifier's None ("does not apply") is no 0 and no NaN in reward/<domain>/<component>:
    the mean is over the items it applied to, and the key is absent where it applied to none."""
    comps = [
        RewardComponent(verifier="sampler_none_for_b", name="n"),
        RewardComponent(verifier="exact_match", name="em"),
    ]
    pool = RewardPool(InlineBackend(), {"d": comps, "e": comps}, 2, 10.0, [None])
    d = [hand_group("0", "d", ["a", "b", "c", "b"])]
    e = [hand_group("1", "e", ["b", "b"])]
    pool.score("d", d)
    pool.score("e", e)
    assert math.isnan(d[0].components["n"][1])  # stored as NaN per item, as the scorer does
    m = RolloutBatch(d + e, d + e).metrics(["d", "e"])
    assert m["reward/d/n"] == pytest.approx(0.5)  # a: 1, c: 0; the two b's do not count
    assert "reward/e/n" not in m  # applied to nothing in e
    assert m["reward/e/em"] == 0.0 and m["reward/d/em"] == 0.25
    assert all(math.isfinite(v) for v in m.values())


def test_a_failing_verifier_stops_the_step_after_logging_its_groups(tmp_path, model, caplog):
    """Past reward.max_error_rate the step stops with one line naming rollouts.jsonl, where the
    failing domain's groups are, with the reasons and the learner's advantages (unscaled
    here, as learner.scale_advantages: false trains); the console warning names the domain."""
    sampler = make(
        tmp_path,
        model,
        ["bad a", "vary b", "bad c", "vary d"],
        reward=[{"verifier": "test_fails_on_bad", "name": "v"}],
        recipe={"reward": {"max_error_rate": 0.0}, "learner": {"scale_advantages": False}},
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ctrl = SimpleNamespace(recipe=sampler.recipe, sampler=sampler, run_dir=run_dir, step=2)
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(
            RewardFailure, match=r"^domain 'd', reward component 'v': .*rollouts\.jsonl$"
        ),
    ):
        StepRunner(ctrl).step(["d"], None)
    lines = read_rollouts(run_dir)
    assert len(lines) == 4  # the step's 4 groups, all of domain d
    assert {(x["kind"], x["step"], x["domain"]) for x in lines} == {("train", 3, "d")}
    bad = [x for x in lines if x["prompt"].startswith("bad")]
    assert bad and all(
        "no parser for this prompt" in c["reason"] for x in bad for c in x["completions"]
    )
    for x in lines:
        rewards_ = [c["reward"] for c in x["completions"]]
        logged = [c["advantage"] for c in x["completions"]]
        assert logged == pytest.approx(learner_advantages(rewards_, scale=False), abs=1e-3)
    assert any(len({c["reward"] for c in x["completions"]}) > 1 for x in lines)  # not all tied
    warned = [r.getMessage() for r in caplog.records if "reward component 'v'" in r.getMessage()]
    assert len(warned) == 1 and "domain 'd'" in warned[0] and "reward/d/v/errors" in warned[0]


def evaluate_with_failing_items(
    tmp_path: Path, model: str, max_error_rate: float, scale: bool
) -> tuple[Path, RewardFailure | None]:
    """Evaluate an eval set of "bad x" and "vary y" (4 samples each: 4 of 8 items fail) into a
    fresh run folder; (the folder, the RewardFailure if the evaluation stopped)."""
    sampler = make(
        tmp_path,
        model,
        ["vary a"],
        held_out=("bad x", "vary y"),
        reward=[{"verifier": "test_fails_on_bad", "name": "v"}],
        recipe={
            "reward": {"max_error_rate": max_error_rate},
            "learner": {"scale_advantages": scale},
            "eval": {"samples": 4},
        },
    )
    run_dir = tmp_path / f"run-{max_error_rate}"
    metrics = MetricsLogger(run_dir, tensorboard=False)
    parts = (sampler.recipe, sampler.domains, sampler.rollout, sampler.rewards)
    try:
        Evaluator(*parts, metrics).evaluate("base", 0)
    except RewardFailure as exc:
        return run_dir, exc
    finally:
        metrics.close()
    return run_dir, None


def test_evaluation_counts_reward_failures_and_stops_past_the_error_rate(tmp_path, model):
    """Evaluations count verifier errors in their `kind: eval` record, as training steps do,
    log their groups (advantages as the learner scales them) and apply reward.max_error_rate."""
    counted, stop = evaluate_with_failing_items(tmp_path, model, 0.5, scale=True)
    assert stop is None  # 4 of 8 is not more than half
    (record,) = read_metrics(counted, "eval")
    assert record["reward/d/v/errors"] == 4 and "reward/d/v/items" not in record

    stopped, stop = evaluate_with_failing_items(tmp_path, model, 0.25, scale=False)
    assert stop is not None and str(stop).startswith("domain 'd', reward component 'v': ")
    assert "4 of 8 items in evaluation base" in str(stop) and str(stop).endswith("rollouts.jsonl")
    assert read_metrics(stopped) == []  # stopped before the record

    for run_dir, scale in ((counted, True), (stopped, False)):
        lines = read_rollouts(run_dir)  # written in both cases, before any stop
        assert [x["prompt"] for x in lines] == ["bad x", "vary y"]
        assert all(x["kind"] == "eval" and x["label"] == "base" for x in lines)
        vary = [c["reward"] for c in lines[1]["completions"]]
        assert len(set(vary)) > 1  # not tied: scaled and unscaled advantages differ
        for x in lines:
            rewards_ = [c["reward"] for c in x["completions"]]
            logged = [c["advantage"] for c in x["completions"]]
            assert logged == pytest.approx(learner_advantages(rewards_, scale), abs=1e-3)
