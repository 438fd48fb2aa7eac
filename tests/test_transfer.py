"""BWT / FWT / forgetting against hand-computed matrices."""

import pytest

from omnisched.schedule import backward_transfer, forward_transfer, sample_forgetting

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
