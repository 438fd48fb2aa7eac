"""The GRPO objective's pure functions against hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch

from omnisched.learner.grpo import (
    aggregate,
    group_advantages,
    grpo_loss,
    grpo_token_loss,
    importance_log_ratio,
    k3_kl,
    kl_estimate,
    token_entropy,
    token_logprobs,
    token_logprobs_and_entropy,
)

LN2 = math.log(2.0)


def close(actual: torch.Tensor, expected: list | float, atol: float = 1e-5) -> None:
    torch.testing.assert_close(
        actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=0
    )


def test_group_advantages_scaled_by_unbiased_std() -> None:
    # [1,0,0,1]: mean .5, unbiased var = 4 * .25 / 3, std = 1/sqrt(3) -> A = +-.5 sqrt(3)
    # [3,0,0,0]: mean .75, unbiased var = (2.25^2 + 3 * .75^2) / 3 = 2.25, std 1.5
    # [2,2,2,2]: a tie, A = 0
    rewards = torch.tensor([[1.0, 0, 0, 1], [3, 0, 0, 0], [2, 2, 2, 2]])
    h = math.sqrt(3) / 2
    expected = [[h, -h, -h, h], [1.5, -0.5, -0.5, -0.5], [0, 0, 0, 0]]
    close(group_advantages(rewards, scale=True, eps=0.0)[:2], expected[:2])
    close(group_advantages(rewards, scale=True)[2], expected[2])


def test_group_advantages_dr_grpo_only_centres() -> None:
    rewards = torch.tensor([[1.0, 0, 0, 1], [3, 0, 0, 0]])
    close(
        group_advantages(rewards, scale=False),
        [[0.5, -0.5, -0.5, 0.5], [2.25, -0.75, -0.75, -0.75]],
    )


def test_group_advantages_rejects_flat_rewards() -> None:
    with pytest.raises(ValueError, match="num_groups"):
        group_advantages(torch.tensor([1.0, 0.0]), scale=True)


def test_group_advantages_match_trl_formula() -> None:
    nanstd = pytest.importorskip("trl.trainer.utils").nanstd
    torch.manual_seed(0)
    rewards = torch.rand(5, 8)
    flat = rewards.view(-1)  # TRL's layout: G consecutive completions per prompt
    mean = flat.view(-1, 8).mean(1).repeat_interleave(8)
    std = nanstd(flat.view(-1, 8), dim=1).repeat_interleave(8)
    trl_adv = ((flat - mean) / (std + 1e-4)).view(5, 8)
    torch.testing.assert_close(group_advantages(rewards, scale=True, eps=1e-4), trl_adv)


def test_token_logprobs_and_entropy_by_hand() -> None:
    # logits [0, ln 3] -> p = [1/4, 3/4]; uniform over 4 -> H = ln 4
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])
    close(token_logprobs(logits, torch.tensor([[1, 0]])), [[math.log(0.75), math.log(0.5)]])
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    close(token_entropy(logits), [[h, LN2]])
    close(token_entropy(torch.zeros(1, 4)), [math.log(4.0)])


def test_fused_logprobs_match_log_softmax_and_entropy_is_detached() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, requires_grad=True)
    labels = torch.randint(0, 11, (3, 5))
    ref = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    logp, entropy = token_logprobs_and_entropy(logits, labels)
    torch.testing.assert_close(logp, ref)
    torch.testing.assert_close(token_logprobs(logits, labels), ref)
    torch.testing.assert_close(entropy, token_entropy(logits).detach())
    assert logp.requires_grad and not entropy.requires_grad


def test_clipped_surrogate_by_hand() -> None:
    # ratio 1.5 and 0.5 with eps 0.2: loss = -min(r A, clip(r, .8, 1.2) A)
    logp = torch.tensor([math.log(1.5)] * 2 + [math.log(0.5)] * 2, requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss = grpo_token_loss(logp, torch.zeros(4), adv, clip_eps=0.2)
    close(loss, [-1.2, 1.5, -0.5, 0.8])
    loss.sum().backward()
    # clipped tokens (r=1.5, A>0 and r=.5, A<0) get no gradient; the others get -A r
    close(logp.grad, [0.0, 1.5, -0.5, 0.0])


def test_clip_higher_widens_only_the_upper_bound() -> None:
    logp = torch.tensor([math.log(1.5), math.log(0.5)])
    adv = torch.tensor([1.0, -1.0])
    close(grpo_token_loss(logp, torch.zeros(2), adv, clip_eps=0.2, clip_eps_high=0.6), [-1.5, 0.8])


def test_k3_kl_known_values() -> None:
    # delta = ref - logp: 0 -> 0; ln 2 -> 2 - ln2 - 1; -ln 2 -> .5 + ln2 - 1
    logp = torch.tensor([-1.0, -1.0, -1.0])
    ref = logp + torch.tensor([0.0, LN2, -LN2])
    close(k3_kl(logp, ref), [0.0, 1 - LN2, LN2 - 0.5])


LOSS_TOK = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]])  # 9s sit in padding
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])


@pytest.mark.parametrize(
    ("mode", "max_len", "expected"),
    [
        ("token-mean", None, (1 + 2 + 3 + 4) / 4),
        ("sequence-mean", None, ((1 + 2 + 3) / 3 + 4 / 1) / 2),
        ("dr-grpo", None, 10 / (2 * 4)),
        ("dr-grpo", 5, 10 / (2 * 5)),
    ],
)
def test_aggregate_modes_on_ragged_mask(mode: str, max_len: int | None, expected: float) -> None:
    close(aggregate(LOSS_TOK, MASK, mode, max_len), expected)


@pytest.mark.parametrize("mode", ["token-mean", "sequence-mean", "dr-grpo"])
def test_aggregate_micro_batches_sum_to_full_batch(mode: str) -> None:
    full = aggregate(LOSS_TOK, MASK, mode, max_len=4)
    parts = [
        aggregate(LOSS_TOK[i : i + 1], MASK[i : i + 1], mode, 4, total_tokens=4, total_seqs=2)
        for i in range(2)
    ]
    close(parts[0] + parts[1], float(full))


def test_aggregate_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(LOSS_TOK, MASK, "bnpo")  # type: ignore[arg-type]


def test_grpo_loss_combines_surrogate_kl_and_metrics() -> None:
    # On-policy (ratio 1), A = [1, -1], ref = logp + ln2 so k3 = 1 - ln2 on every token.
    # token-mean over 4 tokens: (3 * -1 + 1 + 4 * 0.1 * k3) / 4
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    logp = torch.full((2, 3), -1.0, requires_grad=True)
    adv = torch.tensor([1.0, -1.0])
    loss, m = grpo_loss(
        logp, logp.detach(), adv, mask, clip_eps=0.2, kl_coef=0.1, ref_logp=logp.detach() + LN2
    )
    k3 = 1 - LN2
    close(loss, (-2 + 0.4 * k3) / 4)
    close(m["kl"], k3)
    close(m["ratio"], 1.0)
    close(m["clip_frac"], 0.0)
    loss.backward()
    # d/dlogp of -A r / N is -A / N; of 0.1 k3 / N is 0.1 (1 - exp(delta)) / N = -0.1 / N
    g = (-adv[:, None] - 0.1) / 4 * mask
    close(logp.grad, g.tolist())


def test_grpo_loss_clip_fraction_and_padding_safety() -> None:
    # ratios 1.5 (A>0: clipped high), 0.5 (A>0: not clipped); padding holds extreme logprobs
    logp = torch.tensor([[math.log(1.5), math.log(0.5), -1000.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, m = grpo_loss(
        logp,
        torch.zeros(1, 3),
        torch.tensor([1.0]),
        mask,
        clip_eps=0.2,
        kl_coef=0.5,
        ref_logp=torch.zeros(1, 3),
    )
    assert torch.isfinite(loss)
    close(m["clip_frac"], 0.5)
    close(m["ratio"], 1.0)


def test_grpo_loss_needs_reference_for_kl() -> None:
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(x, x, torch.ones(1), torch.ones(1, 2), clip_eps=0.2, kl_coef=0.1)


def test_tied_groups_get_exactly_zero_advantage_despite_rounding() -> None:
    # mean([0.1] * 3) rounds to 0.10000000000000002: r - mean is not 0 without the tie rule
    rewards = torch.tensor([[0.1, 0.1, 0.1], [0.7, 0.7, 0.7], [0.1, 0.2, 0.3]], dtype=torch.float64)
    adv = group_advantages(rewards, scale=True)
    assert torch.equal(adv[:2], torch.zeros(2, 3))
    assert adv[2].abs().min() == 0.0 and adv[2].abs().max() > 0.9  # the middle one is the mean


def test_advantage_epsilon_keeps_near_ties_small() -> None:
    near = torch.tensor([[0.5, 0.5 + 1e-6]])
    assert group_advantages(near, eps=1e-4).abs().max() < 0.01  # TRL's eps: no blow-up
    assert group_advantages(near, eps=1e-9).abs().max() > 0.6  # a tiny eps: a full +-0.7


def test_logprobs_and_entropy_at_a_sampling_temperature_by_hand() -> None:
    # logits [0, 2 ln 3] at T = 2 -> z = [0, ln 3] -> p = [1/4, 3/4]
    logits = torch.tensor([[0.0, 2 * math.log(3.0)]])
    close(token_logprobs(logits, torch.tensor([1]), temperature=2.0), [math.log(0.75)])
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    close(token_entropy(logits, temperature=2.0), [h])
    logp, entropy = token_logprobs_and_entropy(logits, torch.tensor([0]), temperature=2.0)
    close(logp, [math.log(0.25)])
    close(entropy, [h])


def test_kl_estimators_by_hand() -> None:
    # logp - ref = d: k1 = d, k2 = d^2 / 2, k3 = exp(-d) + d - 1
    logp = torch.tensor([-1.0, -1.0, -1.0])
    ref = logp - torch.tensor([0.0, LN2, -LN2])
    close(kl_estimate(logp, ref, "k1"), [0.0, LN2, -LN2])
    close(kl_estimate(logp, ref, "k2"), [0.0, LN2**2 / 2, LN2**2 / 2])
    close(kl_estimate(logp, ref, "k3"), k3_kl(logp, ref).tolist())
    close(kl_estimate(logp, ref, "k3"), [0.0, 0.5 + LN2 - 1, 2 - LN2 - 1])
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(logp, ref, "k4")  # type: ignore[arg-type]


def test_sequence_level_ratio_is_the_mean_token_log_ratio() -> None:
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-1.0, 0.0, 0.0]])
    old = torch.tensor([[-1.5, -1.5, 0.0], [-2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    close(importance_log_ratio(logp, old, mask, "token"), (logp - old).tolist())
    close(importance_log_ratio(logp, old, mask, "sequence"), [[0.0], [1.0]])


def test_gspo_clips_whole_sequences() -> None:
    # sequence log-ratio ln 1.5 > ln 1.2: with A > 0 every token of it is clipped (no gradient)
    logp = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]], requires_grad=True)
    old = torch.zeros(2, 2)
    mask = torch.tensor([[1, 1], [1, 1]])
    loss, m = grpo_loss(
        logp, old, torch.tensor([1.0, 1.0]), mask, clip_eps=0.2, importance_level="sequence"
    )
    loss.backward()
    assert torch.equal(logp.grad[0], torch.zeros(2))
    assert (logp.grad[1] < 0).all()
    close(m["clip_frac"], 0.5)


def test_bias_corrected_kl_changes_the_gradient_even_on_policy() -> None:
    logp = torch.full((1, 2), -1.0, requires_grad=True)
    ref = logp.detach() + LN2
    mask = torch.ones(1, 2)
    grads = []
    for corrected in (False, True):
        loss, _ = grpo_loss(
            logp, logp.detach(), torch.zeros(1), mask, clip_eps=0.2, kl_coef=1.0,
            ref_logp=ref, kl_bias_correction=corrected,
        )  # fmt: skip
        (g,) = torch.autograd.grad(loss, logp)
        grads.append(g)
    # plain k3: dk3/dlogp = 1 - exp(ref - logp) = -1; corrected: + k3 * d r / d logp = 1 - ln 2
    close(grads[0], [[-0.5, -0.5]])
    close(grads[1], [[(-1 + 1 - LN2) / 2] * 2])
