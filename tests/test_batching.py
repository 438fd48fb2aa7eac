"""Micro-batches by a token budget (hand-worked and swept) and logprobs over chunks of tokens
(values and gradients against the whole vocabulary's logits at once)."""

from __future__ import annotations

import random

import pytest
import torch

from omnisched.errors import ConfigError
from omnisched.learner.base import TrainSample
from omnisched.learner.batching import padded_tokens, plan_micro_batches, seq_len, split_to_count
from omnisched.learner.grpo import token_logprobs_and_entropy
from omnisched.learner.logits import chunked_logprobs_and_entropy


def _sample(prompt: int, completion: int, tag: int = 0) -> TrainSample:
    return TrainSample([1] * prompt, [2] * completion, advantage=float(tag))


def test_token_budget_hand_worked_example():
    # lengths 10, 9, 5, 4, 4, 3 (prompt + completion), a budget of 20 tokens (rows x longest):
    # 10 + 9 -> 2 x 10 = 20; 5 would make 3 x 10 = 30: a new one, which 4, 4, 3 join (4 x 5)
    lengths = [(4, 6), (5, 4), (2, 3), (1, 3), (3, 1), (2, 1)]
    samples = [_sample(p, c, tag=i) for i, (p, c) in enumerate(lengths)]
    plan = plan_micro_batches(samples, size=1, max_tokens=20)
    assert [[seq_len(s) for s in chunk] for chunk in plan] == [[10, 9], [5, 4, 4, 3]]
    assert [padded_tokens(c) for c in plan] == [20, 20]
    # by count the budget is not used; empty completions join no micro-batch
    plain = plan_micro_batches([*samples, _sample(3, 0)], size=4)
    assert [len(c) for c in plain] == [4, 2]


@pytest.mark.parametrize("seed", range(3))
def test_token_budget_keeps_every_sample_once_within_budget_and_sorted(seed):
    rng = random.Random(seed)
    for budget in (12, 30, 100):
        samples = [_sample(rng.randint(1, 6), rng.randint(0, 6), i) for i in range(40)]
        plan = plan_micro_batches(samples, size=1, max_tokens=budget)
        flat = [s for chunk in plan for s in chunk]
        assert sorted(map(id, flat)) == sorted(id(s) for s in samples if s.completion_ids)
        assert all(padded_tokens(c) <= budget for c in plan)
        assert [seq_len(s) for s in flat] == sorted(map(seq_len, flat), reverse=True)
        # greedy: no micro-batch could have taken the next one's first sample
        for a in plan[:-1]:
            assert (len(a) + 1) * seq_len(a[0]) > budget


def test_split_to_count_halves_the_largest_and_refuses_too_few_samples():
    samples = [_sample(2, n) for n in (8, 7, 3, 2, 2, 1)]
    plan = plan_micro_batches(samples, size=1, max_tokens=40)
    assert [len(c) for c in plan] == [4, 2]  # 4 x 10 = 40, then [4, 3]
    split = split_to_count(plan, 4)
    assert [[seq_len(s) for s in c] for c in split] == [[10], [9], [5, 4], [4, 3]]
    assert split_to_count(plan, 2) == plan
    with pytest.raises(ValueError, match="6 samples cannot make 7 micro-batches"):
        split_to_count(plan, 7)


def test_budget_smaller_than_a_sample_names_the_field():
    with pytest.raises(ConfigError) as info:
        plan_micro_batches([_sample(3, 2), _sample(30, 5)], size=1, max_tokens=16)
    message = str(info.value)
    assert "learner.micro_batch_tokens=16" in message and "35 tokens" in message
    assert "\n" not in message


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_logprobs_equal_whole_logits_values_and_gradients(temperature):
    torch.manual_seed(0)
    n, hidden, vocab = 23, 16, 997
    head = torch.nn.Linear(hidden, vocab, bias=False)
    h = torch.randn(n, hidden, requires_grad=True)
    labels = torch.randint(0, vocab, (n,))
    weights = torch.randn(n)  # a loss that weighs every token differently

    logp, entropy = token_logprobs_and_entropy(head(h), labels, temperature)
    (logp * weights).sum().backward()
    expected = (logp.detach(), entropy, h.grad.clone(), head.weight.grad.clone())
    h.grad, head.weight.grad = None, None
    for chunk in (1, 5, n, 100):
        c_logp, c_entropy = chunked_logprobs_and_entropy(h, head, labels, temperature, chunk)
        (c_logp * weights).sum().backward()
        got = (c_logp.detach(), c_entropy, h.grad, head.weight.grad)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
        h.grad, head.weight.grad = None, None
    with pytest.raises(ValueError, match=r"learner\.logits_chunk_tokens must be >= 1"):
        chunked_logprobs_and_entropy(h, head, labels, temperature, 0)
