"""BWT / FWT / forgetting against hand-computed matrices."""

import pytest

from omnisched.schedule import (
    backward_transfer,
    bwt_curve,
    chance_adjusted_forgetting,
    entropy_trend,
    forward_transfer,
    order_rank_correlation,
    prediction_error,
    sample_forgetting,
    transfer_matrix,
    transfer_rates,
)

# Three phases; column j = domain trained in phase j.
R = [
    [0.50, 0.20, 0.30],
    [0.40, 0.60, 0.35],
    [0.30, 0.55, 0.70],
]
BASE = [0.10, 0.15, 0.25]


def test_bwt_hand_computed():
    # ((0.30 - 0.50) + (0.55 - 0.60)) / 2 = (-0.20 - 0.05) / 2
    assert backward_transfer(R) == pytest.approx(-0.125)


def test_fwt_hand_computed():
    # ((R[0][1] - b1) + (R[1][2] - b2)) / 2 = ((0.20 - 0.15) + (0.35 - 0.25)) / 2
    assert forward_transfer(R, BASE) == pytest.approx(0.075)


def test_no_forgetting_gives_zero_bwt_and_gain_gives_positive():
    assert backward_transfer([[0.5, 0.0], [0.5, 0.9]]) == pytest.approx(0.0)
    assert backward_transfer([[0.5, 0.0], [0.8, 0.9]]) == pytest.approx(0.3)


def test_single_phase_is_zero_and_bad_shapes_raise():
    assert backward_transfer([[0.7]]) == 0.0
    assert forward_transfer([[0.7]], [0.1]) == 0.0
    with pytest.raises(ValueError):
        backward_transfer([[0.1, 0.2], [0.3]])
    with pytest.raises(ValueError):
        forward_transfer(R, [0.1])


def test_sample_forgetting_counts_transitions():
    out = sample_forgetting([1, 1, 0, 0, 1], [0, 1, 1, 0, 0])
    assert out == {"forgotten": 2, "gained": 1, "items": 5}
    with pytest.raises(ValueError):
        sample_forgetting([1], [1, 0])


# ---- pairwise transfer D ----------------------------------------------------------------------
BASE3 = {"a": 0.2, "b": 0.3, "c": 0.4}
PHASES = [
    (["a"], 10, {"a": 0.6, "b": 0.2, "c": 0.4}),  # a: +0.4, b: -0.1, c: 0
    (["a", "b"], 10, {"a": 0.5, "b": 0.5, "c": 0.5}),  # mixed: no row, but moves `before`
    (["b"], 10, {"a": 0.4, "b": 0.7, "c": 0.3}),  # a: -0.1, b: +0.2, c: -0.2
    (["a"], 10, {"a": 0.6, "b": 0.7, "c": 0.5}),  # a: +0.2, b: 0, c: +0.2
]


def test_transfer_matrix_means_repeated_phases_and_skips_mixed_ones():
    D = transfer_matrix(BASE3, PHASES)
    assert set(D) == {"a", "b"}  # c was never trained alone
    assert D["a"] == pytest.approx({"a": 0.3, "b": -0.05, "c": 0.1})
    assert D["b"] == pytest.approx({"a": -0.1, "b": 0.2, "c": -0.2})


def test_transfer_matrix_rescales_short_phases_to_a_full_phase():
    phases = [(PHASES[0][0], 5, PHASES[0][2]), PHASES[1], PHASES[2], (["a"], 20, PHASES[3][2])]
    D = transfer_matrix(BASE3, phases, full_steps=20)
    # a pooled over 5 + 20 steps: 20 * (0.4 + 0.2) / 25 = 0.48, 20 * -0.1 / 25, 20 * 0.2 / 25
    assert D["a"] == pytest.approx({"a": 0.48, "b": -0.08, "c": 0.16})
    # b's 10-step phase doubled to 20 steps
    assert D["b"] == pytest.approx({"a": -0.2, "b": 0.4, "c": -0.4})


def test_transfer_rates_solves_separable_phases_exactly():
    rates = transfer_rates(
        [{"a": 10, "b": 0}, {"a": 0, "b": 10}],
        [{"a": 0.5, "b": -0.1}, {"a": 0.2, "b": 0.3}],
        ["a", "b"],
        ridge=0.0,
    )
    assert rates["a"] == pytest.approx({"a": 0.05, "b": -0.01})
    assert rates["b"] == pytest.approx({"a": 0.02, "b": 0.03})


def test_transfer_rates_ridge_shares_credit_between_always_mixed_domains():
    # one phase, 5 steps of each: X^T X + I = [[26, 25], [25, 26]], X^T y = [1, 1] -> 1/51 each
    rates = transfer_rates([{"a": 5, "b": 5}], [{"a": 0.2, "b": 0.2}], ["a", "b"], ridge=1.0)
    assert rates["a"]["b"] == pytest.approx(1 / 51) and rates["b"]["b"] == pytest.approx(1 / 51)
    with pytest.raises(ValueError):
        transfer_rates([{"a": 5, "b": 5}], [{"a": 0.2, "b": 0.2}], ["a", "b"], ridge=0.0)


def test_bwt_curve_is_bwt_of_each_prefix():
    # after phase 1: R[1][0] - R[0][0] = 0.40 - 0.50; after phase 2: the full BWT
    assert bwt_curve(R) == pytest.approx([-0.1, -0.125])


# ---- forgetting and entropy -------------------------------------------------------------------
def test_chance_adjusted_forgetting_hand_computed():
    before = [1, 1, 0, 0, 1, 0, 1, 0, 0, 0]  # 4/10 right
    after = [0, 1, 1, 0, 1, 0, 0, 0, 0, 0]  # 3/10 right; items 0, 6 forgotten, item 2 gained
    out = chance_adjusted_forgetting(before, after, options=4)
    # g = 1/4; known before (0.4 - 0.25) / 0.75 = 0.2, after 0.0667; u = 10 * (1 - 0.2) = 8
    # expected flips by guessing = 8 * 0.25 * 0.75 = 1.5 per direction
    assert out["by_chance"] == pytest.approx(1.5)
    assert out["forgotten"] == pytest.approx(0.5)
    assert out["gained"] == 0.0
    # items a model knows at both evaluations are never discounted
    assert chance_adjusted_forgetting([1, 1], [0, 1], options=4)["forgotten"] == pytest.approx(1)
    with pytest.raises(ValueError):
        chance_adjusted_forgetting([1], [0], options=1)


def test_entropy_trend_slope_and_relative_change():
    t = entropy_trend([1.0, 0.8, 0.6, 0.6])
    # x mean 1.5, y mean 0.75: cov = -0.7, var = 5 -> slope -0.14; (0.6 - 1.0) / 1.0
    assert t["slope"] == pytest.approx(-0.14)
    assert t["relative_change"] == pytest.approx(-0.4)
    assert entropy_trend([0.0, 0.3])["relative_change"] is None
    assert entropy_trend([0.5]) == {"slope": 0.0, "relative_change": 0.0}


# ---- prediction check -------------------------------------------------------------------------
def test_prediction_error_per_domain_and_mae():
    out = prediction_error({"a": 0.5, "b": 0.6}, {"a": 0.4, "b": 0.8})
    assert out["errors"] == pytest.approx({"a": 0.1, "b": -0.2})
    assert out["mae"] == pytest.approx(0.15)


def test_order_rank_correlation_spearman_with_ties():
    def run(p, m):
        return ({"x": p}, {"x": m})

    assert order_rank_correlation([run(0.5, 0.4), run(0.6, 0.45), run(0.7, 0.5)]) == 1.0
    assert order_rank_correlation([run(0.5, 0.5), run(0.6, 0.45), run(0.7, 0.4)]) == -1.0
    # ranks (1.5, 1.5, 3) vs (1, 2, 3): sxy = 1.5, sxx = 1.5, syy = 2 -> 1.5 / sqrt(3)
    rho = order_rank_correlation([run(0.5, 0.1), run(0.5, 0.2), run(0.7, 0.3)])
    assert rho == pytest.approx(1.5 / 3**0.5)
    assert order_rank_correlation([run(0.5, 0.1)]) is None
