"""The GRPO objective and its variants, side by side, as pure torch functions.

Shapes: B sequences, T completion positions, V vocabulary. `mask` is 1 on completion tokens that
carry loss and 0 on padding. Which variant runs is chosen by `LearnerConfig` fields, not classes:
`scale_advantages` (GRPO vs Dr.GRPO advantages), `adv_eps`, `clip_eps_high` (DAPO clip-higher),
`importance_sampling` (token ratios as PPO/GRPO, or GSPO's sequence ratio), `loss_agg` (how
per-token losses become one scalar), `kl_coef` / `kl_estimator` / `kl_bias_correction` (KL to a
frozen reference). Logprobs are those of the sampling distribution: logits / temperature.
The definitions follow TRL 1.16 `GRPOTrainer._compute_loss`; each function names its TRL twin.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

LossAgg = Literal["token-mean", "sequence-mean", "dr-grpo"]
LOSS_AGGS: tuple[str, ...] = ("token-mean", "sequence-mean", "dr-grpo")
KLEstimator = Literal["k1", "k2", "k3"]
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")
ImportanceLevel = Literal["token", "sequence"]


def group_advantages(rewards: Tensor, scale: bool = True, eps: float = 1e-4) -> Tensor:
    """Group-relative advantages for rewards of shape [num_groups, G] (G completions per prompt).

    A = (r - mean_g) / (std_g + eps) with the unbiased (Bessel, n-1) std, as TRL's `nanstd`
    (eps 1e-4, TRL's); scale=False gives Dr.GRPO's A = r - mean_g (TRL `scale_rewards="none"`).
    A group whose rewards all tie gets A = 0.
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must have shape [num_groups, G>=2], got {tuple(rewards.shape)}")
    rewards = rewards.float()
    centred = rewards - rewards.mean(dim=1, keepdim=True)  # r - mean_g
    tied = (rewards == rewards[:, :1]).all(dim=1, keepdim=True)
    centred = centred.masked_fill(tied, 0.0)  # exactly 0, not the mean's rounding error
    if not scale:
        return centred
    return centred / (rewards.std(dim=1, unbiased=True, keepdim=True) + eps)  # / (std_g + eps)


def token_logprobs(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """log p(label) under softmax(logits / T) = z[label] - logsumexp(z), z = logits / T; no
    [.., V] log_softmax is materialised."""
    logits = logits.float() / temperature
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def token_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """H = -sum_v p_v log p_v = logsumexp(z) - sum_v p_v z_v, z = logits / T, in nats."""
    logits = logits.float() / temperature
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def token_logprobs_and_entropy(
    logits: Tensor, labels: Tensor, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """`token_logprobs` and a detached `token_entropy` of softmax(logits / T), sharing one
    logsumexp over the vocabulary (TRL `selective_log_softmax` + `entropy_from_logits`, whose
    callers divide the logits by the sampling temperature first)."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - lse
    with torch.no_grad():  # entropy is a metric here: keep it out of the autograd graph
        probs = torch.exp(logits.detach() - lse.detach().unsqueeze(-1))
        entropy = lse.detach() - (probs * logits.detach()).sum(-1)
    return logp, entropy


def importance_log_ratio(
    logp: Tensor, old_logp: Tensor, mask: Tensor, level: ImportanceLevel = "token"
) -> Tensor:
    """log r: per token, log r_t = logp_t - old_t ([B, T]; PPO / GRPO); per sequence, GSPO's
    log s_i = mean_t (logp - old) over the sequence's tokens ([B, 1]; Zheng et al. 2025,
    TRL `importance_sampling_level="sequence"`)."""
    log_ratio = logp - old_logp
    if level == "token":
        return log_ratio
    if level == "sequence":
        m = mask.to(log_ratio.dtype)
        return ((log_ratio * m).sum(-1) / m.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    raise ValueError(f"unknown importance sampling level '{level}'; known: token, sequence")


def clipped_surrogate(
    ratio: Tensor, advantages: Tensor, clip_eps: float, clip_eps_high: float | None = None
) -> Tensor:
    """-min(r A, clip(r, 1-eps_lo, 1+eps_hi) A), broadcasting r ([B, T] or [B, 1]) against A.

    clip_eps_high=None is symmetric PPO clipping; a larger value is DAPO's clip-higher
    (TRL `epsilon` / `epsilon_high`).
    """
    eps_hi = clip_eps if clip_eps_high is None else clip_eps_high
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + eps_hi)
    return -torch.min(ratio * advantages, clipped * advantages)


def grpo_token_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    clip_eps: float,
    clip_eps_high: float | None = None,
) -> Tensor:
    """Per-token clipped surrogate with r = exp(logp - old); `advantages` broadcasts against
    `logp` (pass [B, 1] for one advantage per sequence)."""
    return clipped_surrogate(torch.exp(logp - old_logp), advantages, clip_eps, clip_eps_high)


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 estimate of KL(pi || ref) per token (Schulman): exp(ref - logp) - (ref - logp) - 1."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1.0


def kl_estimate(logp: Tensor, ref_logp: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    """Per-token estimate of KL(pi || ref) from tokens sampled by pi (Schulman, "Approximating
    KL divergence", 2020): k1 = logp - ref (unbiased, high variance), k2 = (logp - ref)^2 / 2,
    k3 = exp(ref - logp) - (ref - logp) - 1 (unbiased, >= 0; GRPO's and TRL's)."""
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k2":
        return 0.5 * (logp - ref_logp) ** 2
    if estimator == "k3":
        return k3_kl(logp, ref_logp)
    raise ValueError(f"unknown KL estimator '{estimator}'; known: {', '.join(KL_ESTIMATORS)}")


def aggregate(
    loss_tok: Tensor,
    mask: Tensor,
    mode: LossAgg,
    max_len: int | None = None,
    total_tokens: float | None = None,
    total_seqs: float | None = None,
) -> Tensor:
    """Reduce per-token losses [B, T] to a scalar.

    token-mean:    sum(L m) / sum(m)                      (TRL "dapo"; "bnpo" on one micro-batch)
    sequence-mean: mean_i [ sum_t(L m)_i / |o_i| ]         (TRL "grpo", the original GRPO paper)
    dr-grpo:       sum(L m) / (num_seqs * max_len)         (TRL "dr_grpo", Liu et al. 2025)
    When a batch is split into micro-batches, pass the whole batch's `total_tokens` and
    `total_seqs` so the micro-batch losses sum to the full-batch loss (and gradient).
    `max_len` is the constant completion budget of Dr.GRPO; None uses this tensor's width.
    """
    mask = mask.to(loss_tok.dtype)
    num_seqs = float(loss_tok.shape[0]) if total_seqs is None else float(total_seqs)
    masked = loss_tok * mask
    if mode == "token-mean":
        num_tokens = mask.sum().item() if total_tokens is None else float(total_tokens)
        return masked.sum() / max(num_tokens, 1.0)
    if mode == "sequence-mean":
        per_seq = masked.sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.sum() / max(num_seqs, 1.0)
    if mode == "dr-grpo":
        width = loss_tok.shape[-1] if max_len is None else max_len
        return masked.sum() / max(num_seqs * width, 1.0)
    raise ValueError(f"unknown loss_agg '{mode}'; known: {', '.join(LOSS_AGGS)}")


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """sum(x m) / sum(m), 0 when the mask is empty."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps: float,
    clip_eps_high: float | None = None,
    loss_agg: LossAgg = "token-mean",
    kl_coef: float = 0.0,
    ref_logp: Tensor | None = None,
    kl_estimator: KLEstimator = "k3",
    kl_bias_correction: bool = False,
    importance_level: ImportanceLevel = "token",
    max_len: int | None = None,
    total_tokens: float | None = None,
    total_seqs: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO loss = aggregate(clipped surrogate + kl_coef * KL) and detached metrics.

    The surrogate clips r = exp(`importance_log_ratio`) at the token or (GSPO) sequence level.
    The KL term is `kl_estimate`; `kl_bias_correction` multiplies it by r (TRL
    `use_bias_correction_kl`, DeepSeek-V3.2), which changes its gradient even where r = 1.
    `advantages` is [B] (one per sequence) or [B, T]. Metrics are masked token means over this
    batch: `clip_frac` (TRL's region-clipped fraction: r < 1-eps with A < 0, or r > 1+eps_hi with
    A > 0), `ratio` (mean importance ratio) and `kl` (mean KL estimate, when `ref_logp` is given).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    advantages = advantages.to(logp.dtype)
    pad = ~mask.bool()  # zero padding so exp() there cannot overflow into inf * 0 = NaN
    logp, old_logp = logp.masked_fill(pad, 0.0), old_logp.masked_fill(pad, 0.0)
    if ref_logp is not None:
        ref_logp = ref_logp.masked_fill(pad, 0.0)
    ratio = torch.exp(importance_log_ratio(logp, old_logp, mask, importance_level))
    loss_tok = clipped_surrogate(ratio, advantages, clip_eps, clip_eps_high)
    metrics: dict[str, Tensor] = {}
    if ref_logp is not None:
        kl = kl_estimate(logp, ref_logp, kl_estimator)
        if kl_coef > 0:
            loss_tok = loss_tok + kl_coef * (kl * ratio if kl_bias_correction else kl)
        metrics["kl"] = masked_mean(kl.detach(), mask)
    elif kl_coef > 0:
        raise ValueError("kl_coef > 0 needs ref_logp")
    loss = aggregate(loss_tok, mask, loss_agg, max_len, total_tokens, total_seqs)
    with torch.no_grad():
        eps_hi = clip_eps if clip_eps_high is None else clip_eps_high
        r = ratio.detach().expand_as(logp)
        clipped = ((r < 1 - clip_eps) & (advantages < 0)) | ((r > 1 + eps_hi) & (advantages > 0))
        metrics["clip_frac"] = masked_mean(clipped.to(logp.dtype), mask)
        metrics["ratio"] = masked_mean(r, mask)
    return loss, metrics
