"""The hybrid reward: weights, normalisation, gates, dropped verdicts and judge counters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import pydantic
import pytest

import judges
from judges import Verdict
from omnisched.config.schema import RewardComponent
from omnisched.errors import ConfigError
from omnisched.scoring import RewardScorer, impute_group_mean


class TableJudge:
    """Scores completions from a table; 'lost' ones are dropped verdicts. Records what it saw."""

    seen: ClassVar[list[str]] = []

    def __init__(self, table: dict[str, float], lost: Sequence[str] = ()) -> None:
        self.table, self.lost = table, set(lost)

    def judge(self, prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[Verdict]:
        TableJudge.seen += list(completions)
        return [
            Verdict(0.5, "judge failed (drop)", dropped=True)
            if c in self.lost
            else Verdict(self.table[c], "table")
            for c in completions
        ]

    def take_counters(self) -> dict[str, int]:
        return {"fallbacks": len(self.lost)}


judges.JUDGES.add("test_table", TableJudge, replace=True)
FORMAT = RewardComponent(verifier="format", weight=0.0)  # gates only, earns nothing itself
TABLE = {"<answer>a</answer>": 0.8, "a": 0.9, "<answer>b</answer>": 0.2, "b": 0.4}


def judge_component(**fields: Any) -> RewardComponent:
    return RewardComponent(judge="test_table", options={"table": TABLE}, **fields)


def test_total_is_the_weighted_mean_of_components():
    scorer = RewardScorer(
        [RewardComponent(verifier="exact_match", weight=3.0), judge_component(weight=1.0)]
    )
    out = scorer.score(["p", "p"], ["a", "b"], {"answer": ["a", "a"]})
    assert out.components == {"exact_match": [1.0, 0.0], "test_table": [0.9, 0.4]}
    assert out.total == pytest.approx([(3 * 1 + 0.9) / 4, 0.4 / 4])
    assert out.reasons[0] == "test_table: table" and out.reasons[1].startswith("exact_match:")
    assert out.counters == {
        "test_table/fallbacks": 0,
        **{f"exact_match/{k}": 0 for k in ("errors", "timeouts", "not_applicable")},
        "exact_match/items": 2,
    }
    assert out.dropped == [False, False]


def test_hard_gate_zeroes_the_total_and_skips_the_judge():
    TableJudge.seen.clear()
    scorer = RewardScorer([FORMAT, judge_component(gate="format")])
    out = scorer.score(["p"] * 3, ["<answer>a</answer>", "a", "<answer>b</answer>"], {})
    assert out.components["format"] == [1.0, 0.0, 1.0]
    assert out.components["test_table"] == [0.8, 0.0, 0.2]
    assert out.total == pytest.approx([0.8, 0.0, 0.2])
    assert TableJudge.seen == ["<answer>a</answer>", "<answer>b</answer>"]  # never paid for "a"
    assert out.counters["test_table/gated"] == 1
    assert out.reasons[1].startswith("format:")  # the first component that fell short


def test_soft_gate_sets_only_the_component_and_threshold_applies():
    comps = [
        RewardComponent(verifier="format", weight=1.0),
        judge_component(gate="format", gate_fail=0.1, weight=1.0),
        judge_component(name="strict", gate="test_table", gate_threshold=0.5),
    ]
    out = RewardScorer(comps).score(["p"] * 2, ["<answer>b</answer>", "b"], {})
    assert out.components["test_table"] == [0.2, 0.1]
    assert out.components["strict"] == [0.0, 0.0]  # 0.2 and 0.1 are below 0.5: hard gate
    assert out.total == [0.0, 0.0]
    out = RewardScorer(comps[:2]).score(["p"] * 2, ["<answer>b</answer>", "b"], {})
    assert out.total == pytest.approx([(1.0 + 0.2) / 2, (0.0 + 0.1) / 2])


def test_dropped_verdicts_take_their_group_mean_and_are_flagged():
    comp = RewardComponent(judge="test_table", options={"table": TABLE, "lost": ["b"]}, name="j")
    out = RewardScorer([comp]).score(
        ["p", "p", "p", "q"], ["a", "b", "<answer>b</answer>", "b"], {}
    )
    assert out.components["j"] == pytest.approx([0.9, 0.55, 0.2, 0.5])  # q: no kept value
    assert out.dropped == [False, True, False, True]
    assert out.counters["j/fallbacks"] == 1


def test_dropped_verdicts_are_imputed_within_their_draw_not_their_prompt():
    """The same prompt drawn twice in a step is two GRPO groups: a lost verdict takes the mean
    of its own group's kept verdicts (group ids), not of every completion of that prompt."""
    comp = RewardComponent(judge="test_table", options={"table": TABLE, "lost": ["b"]}, name="j")
    out = RewardScorer([comp]).score(
        ["p"] * 4, ["a", "b", "<answer>b</answer>", "b"], {}, group_ids=["g1", "g1", "g2", "g2"]
    )
    assert out.components["j"] == pytest.approx([0.9, 0.9, 0.2, 0.2])
    assert out.dropped == [False, True, False, True]


def test_impute_group_mean_by_hand():
    got = impute_group_mean([1.0, 0.0, 0.5, 0.3], [False, True, False, True], ["a", "a", "a", "b"])
    assert got == [1.0, 0.75, 0.5, 0.3]


def test_http_judge_failures_reach_the_batch_counters():
    comp = RewardComponent(
        judge="http",
        options={"base_url": "http://127.0.0.1:9", "model": "m", "retries": 1, "backoff": 0.01,
                 "fallback": "drop"},
    )  # fmt: skip
    out = RewardScorer([comp]).score(["p", "p"], ["x", "y"], {})
    assert out.dropped == [True, True] and out.total == [0.5, 0.5]
    assert out.counters["http/fallbacks"] == 2 and out.counters["http/retries"] == 2
    assert out.counters["http/http_errors"] == 2


def test_bad_component_specs_are_named():
    with pytest.raises(ConfigError, match=r"gate 'nope' is not a component"):
        RewardScorer([judge_component(gate="nope")])
    with pytest.raises(ConfigError, match="share the name"):
        RewardScorer([judge_component(), judge_component()])
    with pytest.raises(ConfigError, match="cycle"):
        RewardScorer([judge_component(name="x", gate="y"), judge_component(name="y", gate="x")])
    with pytest.raises(pydantic.ValidationError, match="cannot gate itself"):
        judge_component(gate="test_table")
    with pytest.raises(pydantic.ValidationError, match="gate_threshold"):
        judge_component(gate="format", gate_threshold=1.5)


def test_rubric_diversity_counts_copies_within_a_draw():
    line = "the sea sings softly home."
    rubric = judges.CreativeRubricJudge()
    one_group = rubric.judge(["p", "p"], [line, line], keyword=["sea", "sea"])
    two_draws = rubric.judge(["p", "p"], [line, line], keyword=["sea"] * 2, group_id=["a", "b"])
    assert "diversity 0.50" in one_group[0].rationale
    assert "diversity 1.00" in two_draws[0].rationale
    assert two_draws[0].score > one_group[0].score
