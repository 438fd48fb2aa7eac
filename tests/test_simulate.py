"""The simulator (dynamics by hand, evaluations like real ones) and a small run of the planner
benchmark: every policy through the real SchedulerService on 30 worlds, judged against a random
order and the uniform mixture (bench/bench_planner.py runs 500 with confidence intervals)."""

import math
from dataclasses import replace

import numpy as np
import pytest

from omnisched.simulate.run import pick_arms, run_arena
from omnisched.simulate.world import (
    evaluate,
    initial_state,
    run_order,
    sample_world,
    step_stats,
    train,
)


def two_domain_world():
    w = sample_world(np.random.default_rng(0), K=2)
    return replace(
        w,
        kinds=("structured", "open"),
        start=[0.2, 0.3],
        ceiling=[0.8, 0.7],
        rate=[0.5, 0.5],
        transfer=[[0.0, -0.05], [0.02, 0.0]],
        fragility=[math.log(2), 0.0],
        interference=[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
        entropy_collapse=math.log(2),
        entropy_recovery=0.0,
        entropy_sensitivity=1.0,
        open_erasure=0.0,
    )


def test_one_phase_by_hand():
    w = two_domain_world()
    s = initial_state(w)
    train(w, s, 0, 1.0)  # structured: half its 0.6 gap; open loses 0.05; entropy halves
    assert s.skill == pytest.approx([0.5, 0.25])
    assert s.fresh == pytest.approx([0.3, 0.0]) and s.entropy == pytest.approx(0.5)
    train(w, s, 1, 1.0)  # open learns at entropy^1 = 0.5 speed: 1 - 0.5^0.5 of its 0.45 gap
    gain = (1 - 0.5**0.5) * 0.45
    # structured gets +0.02, then loses half of its 0.3 fresh skill (fragility ln 2)
    assert s.skill == pytest.approx([0.5 + 0.02 - 0.15, 0.25 + gain])
    assert s.fresh[0] == pytest.approx(0.15)


def test_order_matters_in_a_world():
    w = two_domain_world()
    a, b = run_order(w, [0, 1]).mean(), run_order(w, [1, 0]).mean()
    assert a != pytest.approx(b)


def test_evaluations_are_noisy_paired_item_scores_around_the_truth():
    rng = np.random.default_rng(1)
    w = sample_world(rng, K=3)
    s = initial_state(w)
    acc, _, items = evaluate(w, s, rng)
    for d, name in enumerate(w.names):
        assert len(items[name]) == 128 and set(items[name]) <= {0, 0.25, 0.5, 0.75, 1.0}
        assert acc[name] == pytest.approx(w.start[d], abs=0.08)  # 128 items, avg@4
    means = [evaluate(w, s, rng)[0][w.names[0]] for _ in range(200)]
    assert np.mean(means) == pytest.approx(w.start[0], abs=0.01)  # unbiased


def test_step_stats_cover_the_domains_drawn():
    rng = np.random.default_rng(2)
    w = sample_world(rng, K=3)
    stats = step_stats(w, initial_state(w), [0.5, 0.5, 0.0], rng)
    names = w.names
    assert {f"reward/{names[0]}", f"adv_abs/{names[1]}"} <= set(stats)
    assert f"reward/{names[2]}" not in stats
    assert f"learner/grad_cos/{names[0]}/{names[1]}" in stats


def test_unknown_arms_are_one_line():
    from omnisched.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown arm\(s\) \['nope'\]; known: bwt"):
        pick_arms(["bwt", "nope"])


@pytest.mark.slow
def test_small_planner_benchmark():
    """30 worlds (deterministic: seeded numpy and pure-Python dynamics). The margins hold on
    these worlds with room; the 500-world run with CIs is the benchmark's."""
    arms = ["bwt", "structured-first", "bandit", "tac", "joint"]
    s, _, _ = run_arena(30, arms, agreement=False)
    assert len(set(s.steps.values())) == 1  # equal compute
    random_order = s.regret["random order"][0]
    assert s.regret["bwt"][0] < 0.75 * random_order
    assert s.regret["bwt"][0] < s.regret["structured-first"][0]
    assert s.vs_uniform["bandit"][0] <= 0.05 and s.vs_uniform["tac"][0] <= 0.05
    assert s.vs_uniform["joint"] == (0.0, 0.0, 0.0)  # joint is the uniform mixture
    first, *_, last = s.mae_by_decision["bwt"]
    assert last[0] < first[0]  # predictions improve as measurements arrive
