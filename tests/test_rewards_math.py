"""The `math` verifier: answer extraction and a table of equivalence cases (equal and unequal)."""

from __future__ import annotations

import pytest

import rewards
from rewards.math_answer import INTEGER, equivalent, extract_answer, last_boxed

# (gold, predicted answer, equivalent?)
EQUIVALENCE = [
    ("1/2", "0.5", True),
    ("1/2", "\\frac{1}{2}", True),
    ("\\frac{1}{2}", "\\dfrac{1}{2}", True),
    ("\\frac{3}{4}", "0.75", True),
    ("0.75", "3/4", True),
    ("2", "2.0", True),
    ("2", "2.00", True),
    ("-3", "-3", True),
    ("-3", "3", False),
    ("1/3", "0.333", False),
    ("1/3", "\\frac{2}{6}", True),
    ("10", "1 \\times 10^{1}", True),
    ("2.5", "2.5e0", False),  # LaTeX reads "e" as Euler's number
    ("1000", "1,000", True),
    ("1000000", "1{,}000{,}000", True),
    ("50\\%", "50", True),
    ("50\\%", "50%", True),
    ("25\\%", "30\\%", False),
    ("\\sqrt{2}", "2^{1/2}", True),
    ("\\sqrt{2}", "1.41421356237", True),
    ("\\sqrt{8}", "2\\sqrt{2}", True),
    ("\\sqrt{3}", "\\sqrt{2}", False),
    ("\\pi", "3.14159265358979", True),
    ("2\\pi", "\\pi", False),
    ("x^2+2x+1", "(x+1)^2", True),
    ("x^2-1", "(x-1)(x+1)", True),
    ("x+1", "x-1", False),
    ("2x", "x*2", True),
    ("\\{1,2,3\\}", "\\{3,2,1\\}", True),
    ("\\{1,2\\}", "\\{1,2,3\\}", False),
    ("[0,1]", "[0, 1]", True),
    ("(0,1]", "(0,1]", True),
    ("(0,1)", "[0,1]", False),
    ("(-\\infty, 2)", "(-\\infty,2)", True),
    ("[1,2)\\cup(3,4]", "[1,2) \\cup (3,4]", True),
    ("(1,2)", "(1,3)", False),
    ("3", "4", False),
    ("7", "\\boxed{7}", True),
    ("12", "12 apples", True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}", True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{2}}{2}", False),
    ("e", "\\exp(1)", True),
    ("\\log(8)", "3\\log(2)", True),
    ("0", "-0", True),
    ("0.1", "0.10", True),
    ("0.1", "0.01", False),
    ("100", "10^2", True),
    ("2^{10}", "1024", True),
    ("2^{10}", "1000", False),
    ("\\infty", "\\infty", True),
    ("\\infty", "-\\infty", False),
    ("\\frac{7}{2}", "3\\frac{1}{2}", True),
    ("1.5", "\\frac{3}{2}", True),
    ("-\\frac{1}{4}", "-0.25", True),
    ("-\\frac{1}{4}", "0.25", False),
    ("\\text{(B)}", "\\text{(C)}", False),
]


@pytest.mark.parametrize(("gold", "predicted", "equal"), EQUIVALENCE)
def test_math_equivalence_table(gold: str, predicted: str, equal: bool) -> None:
    completion = f"Working it out... the answer is {predicted}."
    score = rewards.get("math")([completion], answer=[gold])[0]
    assert (score == 1.0) is equal, score.reason


def test_table_is_large_and_balanced() -> None:
    assert len(EQUIVALENCE) >= 50
    assert sum(e for *_, e in EQUIVALENCE) >= 15
    assert sum(not e for *_, e in EQUIVALENCE) >= 15


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so x = \\boxed{\\frac{1}{2}} and that's it", "\\frac{1}{2}"),
        ("first \\boxed{1}, then \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("The answer is 42.", "42"),
        ("Answer: $3/4$", "3/4"),
        ("We get 3 apples and 5 pears, so 8", "8"),
        ("Total: 1,234.5 dollars", "1234.5"),
        ("It rises by 12%", "12%"),
        ("no digits here", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_unbalanced_box_is_ignored() -> None:
    assert last_boxed("\\boxed{\\frac{1}{2}") is None


def test_math_reasons() -> None:
    scores = rewards.get("math")(["I don't know", "answer is 5"], answer=["4", "4"])
    assert [float(s) for s in scores] == [0.0, 0.0]
    assert scores[0].reason == "no answer found"
    assert "'5'" in scores[1].reason


def test_math_accepts_and_ignores_trl_columns() -> None:
    out = rewards.get("math")(["\\boxed{2}"], answer=["2"], prompts=["1+1?"], extra=[object()])
    assert out == [1.0]


INTEGER_PAIRS = [
    ("7", "7"),
    ("7", "007"),
    ("-0", "0"),
    ("-5", "5"),
    ("12", "13"),
    ("100", "1e2"),
    ("42", "42.0"),
    ("3", "3/1"),
    ("-17", "-17"),
    ("0", "00"),
    ("123456789", "123456789"),
]


@pytest.mark.parametrize(("gold", "predicted"), INTEGER_PAIRS)
def test_integer_fast_path_agrees_with_math_verify(gold: str, predicted: str) -> None:
    """Where both sides are plain integers the verifier skips math-verify; its verdict must be
    the one math-verify gives (pairs that are not both integers still go through math-verify)."""
    from math_verify import parse, verify

    assert bool(INTEGER.fullmatch(gold) and INTEGER.fullmatch(predicted)) == (
        "." not in predicted and "/" not in predicted and "e" not in predicted
    )
    expected = bool(verify(parse(f"${gold}$"), parse(f"${predicted}$")))
    assert equivalent(gold, predicted) is expected
