"""The hybrid reward: verifier and judge components, weighted and normalised, with reasons."""

import pytest

from omnisched.config.schema import RewardComponent
from omnisched.errors import PluginError
from omnisched.scoring import RewardScorer


def test_weighted_mix_of_verifier_and_judge_is_normalised():
    scorer = RewardScorer(
        [
            RewardComponent(verifier="exact_match", weight=3.0),
            RewardComponent(judge="creative_rubric", weight=1.0),
        ]
    )
    prompts = ["p", "p"]
    out = scorer.score(
        prompts,
        ["the sea sings softly home.", "zzz"],
        {"answer": ["the sea sings softly home.", "x"], "keyword": ["sea", "sea"]},
    )
    assert out.components["exact_match"] == [1.0, 0.0]
    judge = out.components["creative_rubric"]
    assert judge[0] == pytest.approx(1.0) and judge[1] < 0.5
    assert out.total[0] == pytest.approx(1.0)
    assert out.total[1] == pytest.approx(0.25 * judge[1])
    assert out.reasons[0] is None and out.reasons[1].startswith("exact_match:")


def test_math_verifier_through_the_scorer():
    scorer = RewardScorer([RewardComponent(verifier="math")])
    out = scorer.score(["q"] * 3, ["42", "The answer is 1/2", "7"], {"answer": ["42", "0.5", "8"]})
    assert out.total == [1.0, 1.0, 0.0]


def test_unknown_component_names_list_the_known_ones():
    with pytest.raises(PluginError, match=r"unknown verifier 'nope'.*math"):
        RewardScorer([RewardComponent(verifier="nope")])
    with pytest.raises(PluginError, match=r"unknown judge 'nope'.*creative_rubric"):
        RewardScorer([RewardComponent(judge="nope")])
