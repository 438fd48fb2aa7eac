"""One GRPO optimizer step's pieces, shared by the torch and DeepSpeed learners.

Samples become right-padded micro-batches (`micro_batch`: longest first, by a sample count or a
token budget); logits are computed only at the positions that predict completion tokens (HF
`logits_to_keep`; in chunks of tokens with `logits.py`) and divided by the sampling
temperature; every micro-batch loss is divided by the whole batch's counts (`Normalisers`), so
accumulating them gives exactly the full-batch gradient of the loss as GRPO, DAPO or Dr.GRPO
define it, however the batch was split and whatever samples were left out. Only the backward
pass and the optimizer step differ between backends.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from omnisched.config.schema import LearnerConfig
from omnisched.learner.base import TrainSample
from omnisched.learner.grpo import grpo_loss, masked_mean, token_logprobs_and_entropy
from omnisched.learner.logits import chunked_policy_logprobs
from omnisched.learner.micro_batch import MicroBatch, build_micro_batch, to_device


@dataclass(frozen=True)
class Normalisers:
    """What a step's loss is divided by (`grpo.aggregate`): the completion tokens (token-mean)
    and sequences (sequence-mean, dr-grpo) of the whole batch as drawn, and Dr.GRPO's constant
    completion budget `max_len`."""

    tokens: float
    seqs: float
    max_len: int


def check_samples(samples: Sequence[TrainSample]) -> None:
    """Reject batches the loss cannot be defined on, naming the offending sample."""
    if not any(s.completion_ids for s in samples):
        raise ValueError("train_step needs at least one sample with a non-empty completion")
    for i, s in enumerate(samples):
        if not s.prompt_ids:
            raise ValueError(f"sample {i}: empty prompt_ids (a completion token needs context)")
        if s.old_logprobs is not None and len(s.old_logprobs) != len(s.completion_ids):
            raise ValueError(
                f"sample {i}: {len(s.old_logprobs)} old_logprobs for "
                f"{len(s.completion_ids)} completion tokens"
            )


def normalisers(
    samples: Sequence[TrainSample],
    num_seqs: int | None,
    num_tokens: int | None,
    max_completion_len: int | None,
) -> Normalisers:
    """The batch's counts (`TrainBatch.num_seqs` / `num_tokens`; by default those of the real,
    non-pad `samples`) and Dr.GRPO's budget: the configured one, else the longest completion."""
    real = [s for s in samples if not s.pad]
    tokens = sum(len(s.completion_ids) for s in real) if num_tokens is None else num_tokens
    seqs = len(real) if num_seqs is None else num_seqs
    longest = max(len(s.completion_ids) for s in samples)
    return Normalisers(float(tokens), float(seqs), max_completion_len or longest)


def policy_logits(model: nn.Module, mb: MicroBatch, bf16: bool) -> Tensor:
    """Logits [b, W, V] at the window positions (`model` may be a DeepSpeed engine)."""
    with torch.autocast(mb.input_ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(
            input_ids=mb.input_ids,
            attention_mask=mb.attention_mask,
            logits_to_keep=mb.positions,
            use_cache=False,
        )
    return out.logits


def logprobs_of(
    model: nn.Module, mb: MicroBatch, cfg: LearnerConfig, temperature: float
) -> tuple[Tensor, Tensor]:
    """(logprobs, entropies) [b, W] of the window's labels under softmax(logits / T); with
    `cfg.logits_chunk_tokens`, never more than that many tokens' logits at once."""
    if cfg.logits_chunk_tokens is not None:
        return chunked_policy_logprobs(model, mb, cfg.bf16, temperature, cfg.logits_chunk_tokens)
    return token_logprobs_and_entropy(policy_logits(model, mb, cfg.bf16), mb.labels, temperature)


@torch.no_grad()
def fill_fixed_logprobs(
    model: nn.Module,
    ref_model: nn.Module | None,
    batches: list[MicroBatch],
    cfg: LearnerConfig,
    temperature: float = 1.0,
) -> None:
    """Logprobs that stay fixed across PPO epochs: the reference's, and (when epochs > 1) the
    pre-update policy's for samples without sampler logprobs, so later epochs see ratio != 1."""
    need_old = cfg.ppo_epochs > 1
    if need_old:
        model.eval()
    for mb in batches:
        if ref_model is not None:
            mb.ref_logp, _ = logprobs_of(ref_model, mb, cfg, temperature)
        if need_old and not bool(mb.has_old.all()):
            cur, _ = logprobs_of(model, mb, cfg, temperature)
            mb.old_logp = torch.where(mb.has_old, mb.old_logp, cur)
            mb.has_old = torch.ones_like(mb.has_old)


Backward = Callable[[Tensor, bool], None]  # (micro-batch loss, is the step's last micro-batch)


def micro_loss(
    logp: Tensor,
    mb: MicroBatch,
    cfg: LearnerConfig,
    norm: Normalisers,
    rows: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The GRPO loss of a micro-batch (or of its `rows`), normalised by the whole step's counts:
    micro-batch losses, and the row subsets of one micro-batch, add up to the step's loss."""
    old = torch.where(mb.has_old, mb.old_logp, logp.detach())  # on-policy: ratio 1
    ref = mb.ref_logp
    adv, mask = mb.advantages, mb.mask
    if rows is not None:
        logp, old, adv, mask = logp[rows], old[rows], adv[rows], mask[rows]
        ref = None if ref is None else ref[rows]
    return grpo_loss(
        logp,
        old,
        adv,
        mask,
        clip_eps=cfg.clip_eps,
        clip_eps_high=cfg.clip_eps_high,
        loss_agg=cfg.loss_agg,
        kl_coef=cfg.kl_coef,
        ref_logp=ref,
        kl_estimator=cfg.kl_estimator,
        kl_bias_correction=cfg.kl_bias_correction,
        importance_level=cfg.importance_sampling,
        max_len=norm.max_len,
        total_tokens=norm.tokens,
        total_seqs=norm.seqs,
    )


class GradAlignment:
    """Each domain's gradient of a few parameters (`alignment_params`: the last decoder layer
    and the final norm, so the extra backward passes stop there), summed over a step's
    micro-batches; `cosines` compares every two domains' (TAC's gradient alignment)."""

    def __init__(self, model: nn.Module) -> None:
        self.params = alignment_params(model)
        self.grads: dict[str, Tensor] = {}

    def add(self, logp: Tensor, mb: MicroBatch, cfg: LearnerConfig, norm: Normalisers) -> None:
        names = sorted({d for d in mb.domains if d is not None})
        for d in names:
            rows = torch.tensor([i for i, x in enumerate(mb.domains) if x == d], device=logp.device)
            loss, _ = micro_loss(logp, mb, cfg, norm, rows)
            grads = torch.autograd.grad(loss, self.params, retain_graph=True, allow_unused=True)
            flat = torch.cat([g.reshape(-1) for g in grads if g is not None]).float()
            self.grads[d] = self.grads[d] + flat if d in self.grads else flat

    def cosines(self) -> dict[str, Tensor]:
        names = sorted(self.grads)
        out = {}
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                ga, gb = self.grads[a], self.grads[b]
                out[f"grad_cos/{a}/{b}"] = (ga @ gb) / (ga.norm() * gb.norm()).clamp(min=1e-12)
        return out


def alignment_params(model: nn.Module) -> list[nn.Parameter]:
    """The last decoder layer's parameters and the final norm's (HF `layers.<i>.` names)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    layer = [int(m.group(1)) for n, _ in named if (m := re.search(r"layers\.(\d+)\.", n))]
    if not layer:
        raise ValueError("gradient alignment: the model has no `layers.<i>.` parameters")
    last = f"layers.{max(layer)}."
    chosen = [
        p for n, p in named if last in n or (n.endswith("norm.weight") and "layers." not in n)
    ]
    return chosen


def accumulate_gradients(
    model: nn.Module,
    batches: list[MicroBatch],
    cfg: LearnerConfig,
    backward: Backward,
    norm: Normalisers,
    temperature: float = 1.0,
    alignment: GradAlignment | None = None,
) -> dict[str, Tensor]:
    """Forward and `backward` every micro-batch of one optimizer step; returns the step's loss and
    token-weighted metric means (kept on the device: one host sync per step, not per batch),
    and with `alignment` the cosines between the domains' gradients."""
    sums: dict[str, Tensor] = {}
    carried = torch.stack([mb.mask.sum() for mb in batches]).sum().clamp(min=1)  # no host sync
    for i, mb in enumerate(batches):
        logp, entropy = logprobs_of(model, mb, cfg, temperature)
        loss, stats = micro_loss(logp, mb, cfg, norm)
        if alignment is not None:
            alignment.add(logp, mb, cfg, norm)
        backward(loss, i == len(batches) - 1)
        weight = mb.mask.sum() / carried  # token-weighted metric means over the trained tokens
        stats["entropy"] = masked_mean(entropy, mb.mask)
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + weight * v
        sums["loss"] = sums.get("loss", 0.0) + loss.detach()
    if alignment is not None:
        sums.update(alignment.cosines())
    return sums


def step_metrics(
    steps: list[dict[str, float]], samples: Sequence[TrainSample], ppo_epochs: int, t0: float
) -> dict[str, float]:
    """Metrics averaged over a train_step's optimizer steps, plus token counts and throughput."""
    metrics = {k: sum(s[k] for s in steps) / len(steps) for k in steps[0]}
    elapsed = time.perf_counter() - t0
    real = [s for s in samples if not s.pad]
    tokens = sum(len(s.prompt_ids) + len(s.completion_ids) for s in real)
    metrics.update(
        tokens=float(sum(len(s.completion_ids) for s in real)),
        step_time_s=elapsed,
        tokens_per_s=tokens * ppo_epochs / elapsed,
    )
    return metrics


@torch.no_grad()
def sample_logprobs(
    model: nn.Module,
    samples: Sequence[TrainSample],
    cfg: LearnerConfig,
    pad_token_id: int,
    temperature: float = 1.0,
) -> list[list[float]]:
    """Each sample's completion-token logprobs under the current policy at the sampling
    temperature, as the loss sees them (what an engine's returned logprobs must equal
    on-policy)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[list[float]] = []
    for s in samples:
        mb = to_device(build_micro_batch([s], pad_token_id), device)
        logp, _ = logprobs_of(model, mb, cfg, temperature)
        out.append(logp[0][mb.mask[0]].tolist())
    model.train(was_training)
    return out


def frozen_reference(
    model: nn.Module, ref_model: nn.Module | None, cfg: LearnerConfig
) -> nn.Module | None:
    """The KL reference: the given one, else a copy of `model` when `cfg.kl_coef > 0`; frozen."""
    if ref_model is None and cfg.kl_coef > 0:
        ref_model = copy.deepcopy(model)
    if ref_model is not None:
        ref_model.requires_grad_(False).eval()
    return ref_model
