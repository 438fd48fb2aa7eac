"""Registry, `Score`, `score_batch` (bounded, per-item timeouts, crashes) and shaping rewards."""

from __future__ import annotations

import importlib.metadata
import math
import os
import pickle
import threading
import time

import pytest

import rewards
from omnisched.errors import DataError, PluginError
from rewards.shaping import length_score


def test_builtin_verifiers_are_registered() -> None:
    assert {"math", "code", "format", "length", "exact_match"} <= set(rewards.names())
    assert rewards.VERIFIERS.kind == "verifier"
    assert rewards.VERIFIERS.group == "omnisched.verifiers"


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(PluginError, match=r"unknown verifier 'nope'; known: .*code.*math"):
        rewards.get("nope")


def test_register_decorator_and_trl_signature() -> None:
    @rewards.register("test_always_half")
    def half(completions: list[str], **kwargs: object) -> list[float]:
        return [0.5] * len(completions)

    try:
        assert rewards.get("test_always_half") is half
        assert half(["a", "b"], prompts=["p", "q"], answer=["x", "y"]) == [0.5, 0.5]
        with pytest.raises(PluginError, match="already registered"):
            rewards.register("test_always_half")(lambda completions, **kw: [])
    finally:
        rewards.VERIFIERS._items.pop("test_always_half")


def test_entry_point_verifiers_are_found(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = importlib.metadata.EntryPoint(
        name="test_ep_len", value="rewards.shaping:length_reward", group="omnisched.verifiers"
    )
    real = importlib.metadata.entry_points

    def fake(**kwargs: object):
        if kwargs.get("group") == "omnisched.verifiers":
            return [ep]
        return real(**kwargs)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    monkeypatch.setattr(rewards.VERIFIERS, "_entry_points_loaded", False)
    try:
        assert rewards.get("test_ep_len") is rewards.get("length")
    finally:
        rewards.VERIFIERS._items.pop("test_ep_len", None)


def test_score_is_a_float_with_a_reason() -> None:
    s = rewards.Score(0.0, "no answer found")
    assert isinstance(s, float) and s == 0.0 and s + 1 == 1.0
    assert s.reason == "no answer found"
    back = pickle.loads(pickle.dumps(s))
    assert back == 0.0 and back.reason == "no answer found"


# Module-level so reward worker processes can import them.
def slow_on_sleep(completions: list[str], **_: object) -> list[float]:
    if completions[0] == "sleep":
        time.sleep(60)
    return [1.0]


def crash_on_crash(completions: list[str], **_: object) -> list[float]:
    if completions[0] == "crash":
        os._exit(3)
    if completions[0] == "raise":
        raise RuntimeError("boom")
    return [1.0]


def echo_column(completions: list[str], value: list[int], **_: object) -> list[float]:
    return [float(value[0])]


def test_score_batch_times_out_slow_items_without_stalling() -> None:
    start = time.perf_counter()
    out = rewards.score_batch(
        slow_on_sleep, ["ok", "sleep", "ok", "sleep", "ok"], {}, max_workers=2, timeout=1.0
    )
    assert [float(s) for s in out] == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert "timed out after 1s" in out[1].reason
    assert time.perf_counter() - start < 15


def test_score_batch_survives_crashing_items() -> None:
    out = rewards.score_batch(
        crash_on_crash, ["crash", "ok", "raise", "ok"], {}, max_workers=2, timeout=10
    )
    assert [float(s) for s in out] == [0.0, 1.0, 0.0, 1.0]
    assert "reward worker died" in out[0].reason
    assert "RuntimeError: boom" in out[2].reason


def test_score_batch_aligns_columns_per_item() -> None:
    out = rewards.score_batch(
        echo_column, ["a", "b", "c"], {"value": [3, 1, 2]}, max_workers=2, timeout=10
    )
    assert out == [3.0, 1.0, 2.0]
    with pytest.raises(DataError, match="column 'value' has 2 values for 3 completions"):
        rewards.score_batch(echo_column, ["a", "b", "c"], {"value": [1, 2]})


def test_score_batch_bounds_concurrency_on_threads() -> None:
    active, peak, lock = [0], [0], threading.Lock()

    def tracked(completions: list[str], **_: object) -> list[float]:  # a closure: threads
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return [1.0]

    out = rewards.score_batch(tracked, ["x"] * 8, {}, max_workers=3, timeout=10)
    assert out == [1.0] * 8
    assert peak[0] == 3


def test_unpicklable_verifier_still_times_out() -> None:
    def hang(completions: list[str], **_: object) -> list[float]:
        time.sleep(30)
        return [1.0]

    out = rewards.score_batch(hang, ["x"], {}, max_workers=1, timeout=0.3)
    assert out[0] == 0.0 and "timed out" in out[0].reason


def test_format_reward() -> None:
    fmt = rewards.get("format")
    assert fmt(["<answer>4</answer>"]) == [1.0]
    out = fmt(
        [
            "<think>hm</think><answer>4</answer>",
            "<answer>4</answer><think>x</think>",
            "<answer></answer>",
            "4",
        ],
        tags=["think,answer", ["think", "answer"], None, None],
    )
    assert [float(s) for s in out] == [1.0, 0.0, 0.0, 0.0]
    assert "out of order" in out[1].reason and "empty" in out[2].reason
    assert "exactly once" in out[3].reason


def test_length_reward_is_a_soft_overlong_penalty() -> None:
    assert length_score(10, 100, 20) == 1.0
    assert length_score(90, 100, 20) == pytest.approx(0.5)
    assert length_score(100, 100, 20) == 0.0 and length_score(500, 100, 20) == 0.0
    out = rewards.get("length")(["x" * 10, "x" * 95], max_length=[100, 100], buffer=[20, 20])
    assert out[0] == 1.0 and out[1] == pytest.approx(0.25) and "95 characters" in out[1].reason


def test_exact_match() -> None:
    out = rewards.get("exact_match")(["The Cat.\nmore", "dog"], answer=["cat", "cat"])
    assert [float(s) for s in out] == [1.0, 0.0]


def none_for_b(completions: list[str], **_: object) -> list[float | None]:
    return [None if c == "b" else 1.0 for c in completions]


def test_verifier_failures_are_counted_per_component_and_can_stop_a_run(caplog) -> None:
    """A verifier that raises or crashes is not a low reward: its items are counted as errors
    (one log line per component), and a step where it fails on more than
    reward.max_error_rate of its items stops the run with one line."""
    from omnisched.config.schema import RewardComponent
    from omnisched.errors import OmniError
    from omnisched.orchestration.sampler import check_failures
    from omnisched.scoring import RewardScorer

    rewards.VERIFIERS.add("test_crashy", crash_on_crash, replace=True)
    scorer = RewardScorer([RewardComponent(verifier="test_crashy", name="v")], max_workers=2)
    with caplog.at_level("WARNING"):
        out = scorer.score(["p"] * 4, ["ok", "raise", "ok", "crash"], {})
        scorer.score(["p"], ["raise"], {})
    assert out.total == [1.0, 0.0, 1.0, 0.0]
    assert out.counters["v/errors"] == 2 and out.counters["v/items"] == 4
    assert out.counters["v/timeouts"] == 0
    assert sum("reward component 'v'" in r.message for r in caplog.records) == 1
    check_failures("d", out.counters, 0.5)  # 2 of 4: not more than half
    with pytest.raises(OmniError, match=r"^domain 'd', reward component 'v': .* 2 of 4 items"):
        check_failures("d", out.counters, 0.25)


def test_none_means_does_not_apply_and_leaves_the_component_out_of_the_mean() -> None:
    """TRL's convention: a reward function returns None where it does not apply."""
    from omnisched.config.schema import RewardComponent
    from omnisched.scoring import RewardScorer

    rewards.VERIFIERS.add("test_none_for_b", none_for_b, replace=True)
    comps = [
        RewardComponent(verifier="test_none_for_b", name="n", weight=3.0),
        RewardComponent(verifier="exact_match", weight=1.0),
    ]
    out = RewardScorer(comps).score(["p", "p"], ["a", "b"], {"answer": ["a", "x"]})
    # a: (3 * 1 + 1 * 1) / 4; b: n does not apply, so only exact_match counts: 0 / 1
    assert out.total == pytest.approx([1.0, 0.0])
    out = RewardScorer(comps).score(["p", "p"], ["a", "b"], {"answer": ["x", "b"]})
    assert out.total == pytest.approx([0.75, 1.0])  # b: exact match alone, full marks
    assert out.counters["n/not_applicable"] == 1
    assert math.isnan(out.components["n"][1])


def test_the_readme_verifier_example_runs_as_written() -> None:
    """README "Writing a verifier": its Python block registers a verifier, its YAML block is a
    reward that uses it with an option; both run as a reward worker runs them."""
    import re
    from pathlib import Path

    import yaml

    from omnisched.config.schema import RewardComponent
    from omnisched.errors import ConfigError
    from omnisched.preflight import _check_verifier_options
    from omnisched.scoring import RewardScorer

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Writing a verifier")[1].split("\n### ")[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    reward = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))["reward"]
    exec(compile(code, "README.md", "exec"), {})
    try:
        scorer = RewardScorer([RewardComponent(**c) for c in reward])
        scored = scorer.score(["q", "q"], ["Answer: 4", "4"], {})
        assert scored.total == [1.0, 0.0]
        assert "does not start with 'Answer:'" in scored.reasons[1]
        with pytest.raises(ConfigError, match=r"has no option\(s\) \['prefx'\]; it takes: prefix"):
            _check_verifier_options(rewards.get("starts_with"), "starts_with", {"prefx": 1}, "x")
    finally:
        rewards.VERIFIERS._items.pop("starts_with", None)
