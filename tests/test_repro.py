"""The reproduction: equal-compute accounting, arm recipes, gains, the result table and report."""

import json
from pathlib import Path

import pytest
from conftest import run_python

from omnisched.config import load_recipe
from omnisched.errors import ConfigError
from omnisched.repro.arms import (
    ArmSpec,
    Compute,
    RunSpec,
    arm_compute,
    check_equal_compute,
    plan_arms,
)
from omnisched.repro.report import write_outputs
from omnisched.repro.results import (
    arm_table,
    build_results,
    gains,
    mean_std,
    relative_gain,
)
from omnisched.repro.runner import (
    ReproOptions,
    measured_compute,
    predicted_orders,
    quick_recipe,
    run_recipe,
)
from omnisched.schedule.state import Evaluation, PhaseRecord, SchedulerState

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ["math", "code", "qa", "creative"]


KINDS = {"math": "structured", "code": "structured", "qa": "structured", "creative": "open"}
ARMS = ["base", "joint", "bwt", "reverse", "structured-first", "bandit", "tac", "learnability"]


def test_every_trained_arm_gets_the_same_rl_samples_and_optimizer_steps():
    arms = plan_arms(DOMAINS, all_orders=True, kinds=KINDS)
    names = [a.name for a in arms]
    assert names[:10] == [*ARMS, "merge-ta", "merge-ties"]
    assert len(names) == 10 + 24
    first = next(a for a in arms if a.name == "structured-first").runs[0]
    assert first.order == ("math", "code", "qa", "creative")
    compute = arm_compute(arms, steps_per_phase=5, prompts_per_step=4, group_size=4, ppo_epochs=2)
    assert compute["base"] == Compute(0, 0, 0)
    # 4 phases x 5 steps; 16 samples per step; 2 PPO epochs = 2 optimizer steps per GRPO step
    assert check_equal_compute(compute) == Compute(20, 40, 320)
    merge = next(a for a in arms if a.name == "merge-ta")
    assert [r.order for r in merge.runs] == [(d,) for d in DOMAINS]  # one expert per domain
    assert all(r.phases == 1 for r in merge.runs)  # each: one full phase on its domain


def test_unequal_compute_is_refused():
    arms = [
        ArmSpec("joint", (RunSpec("joint", "joint", 2),)),
        ArmSpec("bwt", (RunSpec("bwt", "bwt", 4),)),
    ]
    with pytest.raises(ValueError, match="equal RL compute"):
        check_equal_compute(arm_compute(arms, 5, 4, 4))


def test_all_orders_refused_beyond_four_domains():
    with pytest.raises(ConfigError, match="120 full runs"):
        plan_arms([*DOMAINS, "extra"], all_orders=True)
    assert len(plan_arms([*DOMAINS, "extra"])) == 10  # without --all-orders any count works


def test_arm_recipes_set_policy_order_phases_and_rl_seed_over_one_shared_warm_start():
    recipe = load_recipe(ROOT / "recipes/repro-tiny.yaml", ["schedule.probe_steps=3"])
    arms = {a.name: a for a in plan_arms(DOMAINS)}
    joint = run_recipe(recipe, arms["joint"].runs[0], seed=7, order=None)
    assert (joint.schedule.policy, joint.schedule.phases, joint.run.seed) == ("joint", 4, 7)
    assert joint.schedule.probe_steps == 0 and joint.run.name == "repro-tiny-joint-s7"
    # the data (eval sets, demonstrations) and the warm start are the recipe's for every seed
    assert joint.data_seed == recipe.run.seed == 0
    bwt = run_recipe(recipe, arms["bwt"].runs[0], seed=9, order=None)
    assert bwt.data_seed == 0 and bwt.schedule.probe_steps == 3  # paid from its own phases
    assert bwt.model == joint.model
    reverse = run_recipe(recipe, arms["reverse"].runs[0], 7, ["qa", "code", "math", "creative"])
    assert reverse.schedule.policy == "sequential"
    assert reverse.schedule.order == ["qa", "code", "math", "creative"]
    expert = arms["merge-ties"].runs[2]
    rec = run_recipe(recipe, expert, 7, expert.order)
    assert (rec.schedule.order, rec.schedule.phases) == (["qa"], 1)
    assert rec.schedule.steps_per_phase == recipe.schedule.steps_per_phase
    assert rec.model == recipe.model  # same SFT config + seed: the warm-start cache is shared
    assert quick_recipe(recipe).schedule.steps_per_phase == recipe.schedule.steps_per_phase // 3


def test_relative_gain_and_mean_std():
    assert relative_gain(0.53, 0.5) == pytest.approx(6.0)  # the paper's +6.2% is of this form
    assert relative_gain(0.4, 0.5) == pytest.approx(-20.0)
    assert relative_gain(0.4, 0.0) is None
    assert mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}
    assert mean_std([0.5])["std"] == 0.0


def _rec(acc, ent=None, bwt=None, level=None, online=None):
    ent = ent or {d: 1.0 for d in acc}
    return {
        "online_prediction_mae": online or [],
        "accuracy": acc,
        "entropy": ent,
        "entropy_history": {d: [1.0, ent[d]] for d in acc},
        "bwt": bwt,
        "level_after_own_phase": level,
        "measured": {"grpo_steps": 8, "rl_samples": 128, "samples_trained": 100},
    }


def _synthetic(curr_a: float):
    """Two seeds, two domains; the curriculum's 'a' score is `curr_a` in both seeds."""
    return {
        0: {
            "kinds": {"a": "structured", "b": "open"},
            "arms": {
                "base": _rec({"a": 0.2, "b": 0.4}),
                "joint": _rec({"a": 0.5, "b": 0.5}),
                "bwt": _rec(
                    {"a": curr_a, "b": 0.6}, {"a": 0.5, "b": 0.3}, -0.1, {"a": 0.9}, [0.2, 0.1]
                ),
                "merge-ta": _rec({"a": 0.3, "b": 0.3}),
                "merge-ties": _rec({"a": 0.4, "b": 0.4}),
            },
            "orders": [
                {
                    "order": ["a", "b"],
                    "arm": "bwt",
                    "predicted": {"a": 0.6, "b": 0.6},
                    "measured": {"a": curr_a, "b": 0.6},
                },
                {
                    "order": ["b", "a"],
                    "arm": "reverse",
                    "predicted": {"a": 0.5, "b": 0.5},
                    "measured": {"a": 0.2, "b": 0.2},
                },
            ],
        },
        1: {
            "kinds": {"a": "structured", "b": "open"},
            "arms": {
                "base": _rec({"a": 0.2, "b": 0.4}),
                "joint": _rec({"a": 0.7, "b": 0.5}),
                "bwt": _rec(
                    {"a": curr_a, "b": 0.8}, {"a": 0.5, "b": 0.3}, -0.3, {"a": 0.9}, [0.4, 0.3]
                ),
                "merge-ta": _rec({"a": 0.3, "b": 0.3}),
                "merge-ties": _rec({"a": 0.4, "b": 0.6}),
            },
            "orders": [],
        },
    }


def test_table_and_gains_from_synthetic_per_seed_results():
    per_seed = _synthetic(curr_a=0.8)
    names = ["base", "joint", "bwt", "merge-ta", "merge-ties"]
    table = arm_table(per_seed, names, ["a", "b"])
    # bwt averages per seed: (0.8+0.6)/2 = 0.7 and (0.8+0.8)/2 = 0.8
    assert table["bwt"]["avg"]["mean"] == pytest.approx(0.75)
    assert table["bwt"]["avg"]["std"] == pytest.approx(0.0707107, rel=1e-5)
    assert table["joint"]["a"]["mean"] == pytest.approx(0.6)
    assert table["joint"]["avg"]["mean"] == pytest.approx(0.55)  # 0.5 and 0.6
    g = gains(table, per_seed, ["a", "b"])
    assert g["curriculum_over_joint"] == pytest.approx((0.75 - 0.55) / 0.55 * 100)
    # merges: ta 0.3, ties (0.4 + 0.5)/2 = 0.45 -> the better merge is the reference
    assert g["merging_reference"] == "merge-ties"
    assert g["curriculum_over_merging"] == pytest.approx((0.75 - 0.45) / 0.45 * 100)
    assert g["wins_over_joint"]["wins"] == 2 and g["wins_over_joint"]["seeds"] == 2


def test_results_and_report_say_when_the_curriculum_loses(tmp_path):
    two = "domains=[{name: a, type: math}, {name: b, type: creative}]"
    recipe = load_recipe(ROOT / "recipes/repro-tiny.yaml", [two])
    per_seed = _synthetic(curr_a=0.1)  # bwt averages 0.35, 0.45 < joint 0.5, 0.6
    arms = plan_arms(["a", "b"])
    compute = arm_compute(arms, 2, 4, 4)
    results = build_results(recipe, arms, compute, per_seed, ReproOptions(seeds=2))
    report = write_outputs(tmp_path, results)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["gains"]["curriculum_over_joint"] == pytest.approx((0.4 - 0.55) / 0.55 * 100)
    assert saved["rank_correlation"]["0"]["rho"] == pytest.approx(1.0)
    text = report.read_text()
    assert "did **not** beat joint training" in text
    assert "BWT of the curriculum: -0.2000" in text
    assert "Forgotten after their own phase" in text and "a 0.800" in text  # 0.9 - 0.1
    assert "Entropy change of open-ended 'b'" in text
    assert "(avg_curriculum - avg_other) / avg_other * 100" in text
    # the planner's online prediction error, per decision, over the two seeds
    online = saved["online_prediction_mae"]
    assert list(online) == ["bwt"] and [c["n"] for c in online["bwt"]] == [2, 2]
    assert [c["mean"] for c in online["bwt"]] == pytest.approx([0.3, 0.2])
    assert [c["std"] for c in online["bwt"]] == pytest.approx([0.1414214] * 2, rel=1e-5)
    assert "## Planner's online predictions" in text and "0.300 ± 0.141" in text
    for png in ("accuracy_bars.png", "entropy.png", "orders.png"):
        assert (tmp_path / png).stat().st_size > 0


def test_measured_compute_reads_the_runs_metrics(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [
        {"kind": "eval", "step": 0},
        {"kind": "train", "step": 1, "prompts/a": 3, "prompts/b": 1, "samples_trained": 12},
        {"kind": "train", "step": 2, "prompts/a": 4, "prompts/b": 0, "samples_trained": 0},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert measured_compute([run, tmp_path / "none"], ["a", "b"], group=4) == {
        "grpo_steps": 2,
        "rl_samples": 32,
        "samples_trained": 12,
    }


def test_predicted_orders_start_from_the_base_with_what_the_bwt_arm_measured():
    from omnisched.schedule.estimate import fit

    ev = lambda a, b: Evaluation({"a": a, "b": b}, {"a": 1.0, "b": 1.0})  # noqa: E731
    state = SchedulerState(["a", "b"], {"a": "structured", "b": "structured"}, "bwt", 2)
    state.baseline = ev(0.2, 0.5)
    state.phases = [
        PhaseRecord(0, ["a"], "r", steps=10, result=ev(0.6, 0.4)),
        PhaseRecord(1, ["b"], "r", steps=10, result=ev(0.5, 0.8)),
    ]
    ab, ba = predicted_orders(state, [["a", "b"], ["b", "a"]], steps_per_phase=10)
    fitted = fit(state, 10)
    # rewound to the baseline: the ceilings the bwt arm measured, no fresh skill yet
    for d in "ab":
        ceiling = fitted.current[d] + fitted.headroom[d].mean
        assert ab[d] <= ceiling + 1e-9 and ba[d] <= ceiling + 1e-9
    assert ab != ba  # the order matters to the fitted model
    # the order the arm ran is predicted near what it measured (a forgot part of its gain)
    assert ab == pytest.approx({"a": 0.5, "b": 0.8}, abs=0.15)


def test_paired_differences_against_joint_with_bootstrap_intervals():
    from omnisched.repro.results import bootstrap_ci, paired_differences

    def seed(bwt, joint, bandit):
        return {"arms": {n: {"accuracy": {"a": v, "b": v}} for n, v in
                         (("bwt", bwt), ("joint", joint), ("bandit", bandit))}}  # fmt: skip

    per_seed = {s: seed(0.5 + 0.01 * s, 0.4, 0.4 + (-0.05 if s % 2 else 0.05)) for s in range(5)}
    paired = paired_differences(per_seed, ["joint", "bwt", "bandit"], ["a", "b"])
    assert set(paired) == {"bwt", "bandit"}
    assert paired["bwt"]["mean"] == pytest.approx(0.12) and paired["bwt"]["beats"]
    assert paired["bwt"]["positive_seeds"] == 5
    lo, hi = paired["bandit"]["ci95"]
    assert lo < 0 < hi and not paired["bandit"]["beats"] and not paired["bandit"]["loses"]
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)


@pytest.mark.slow
def test_reproduce_command_quick_end_to_end(tmp_path):
    from test_e2e import SMALL

    out = tmp_path / "out"

    args = [
        *("reproduce", str(ROOT / "recipes/repro-tiny.yaml"), *SMALL, "ray.enabled=false"),
        *(f"model.warm_start.cache_dir={tmp_path / 'cache'}", "--quick", "--out", str(out)),
        *("--arms", "bwt,reverse,bandit,merge-ta,merge-ties"),
    ]
    run_python("-m", "omnisched.cli", *args, cwd=tmp_path, timeout=600)
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0]
    assert set(results["table"]) == {
        *("base", "joint", "bwt", "reverse", "bandit", "merge-ta", "merge-ties")
    }
    assert set(results["paired_vs_joint"]) == set(results["table"]) - {"joint"}
    # one warm start for every arm: the SFT cache holds a single model
    assert len(list((tmp_path / "cache").glob("tiny-*"))) == 1
    measured = results["compute_measured"]["0"]
    assert len({m["rl_samples"] for a, m in measured.items() if a != "base"}) == 1
    bwt_order = results["per_seed"]["0"]["bwt"]["order"]
    assert results["per_seed"]["0"]["reverse"]["order"] == bwt_order[::-1]
    assert (out / "report.md").read_text().count("## ") >= 5
    assert results["online_prediction_mae"]["bwt"]  # the bwt policy predicted at each decision
    # `omnisched report OUT` regenerates the report from results.json and the runs' states
    del results["online_prediction_mae"]
    for arms in results["per_seed"].values():
        for rec in arms.values():
            rec.pop("online_prediction_mae", None)
    (out / "results.json").write_text(json.dumps(results))
    (out / "report.md").unlink()
    run_python("-m", "omnisched.cli", "report", str(out))
    assert "## Planner's online predictions" in (out / "report.md").read_text()
    assert json.loads((out / "results.json").read_text())["online_prediction_mae"]["bwt"]
