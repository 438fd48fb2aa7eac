"""Scored GRPO groups -> the batch a learner trains on: group-relative advantages, and the
samples that can move the loss."""

from __future__ import annotations

from collections.abc import Sequence

from omnisched.config.schema import LearnerConfig
from omnisched.learner.base import ScoredGroup, TrainBatch, TrainSample


def train_batch(groups: Sequence[ScoredGroup], cfg: LearnerConfig) -> TrainBatch:
    """Advantages per group (`grpo.group_advantages`), the sampler's logprobs (when the groups
    carry them) as each sample's `old_logprobs`; every completion counts in the batch's
    normalisers, but a completion with zero advantage and no KL term (`kl_coef` 0) adds nothing
    to the loss or its gradient and is left out of `samples`: a group whose rewards all tie
    costs no forward or backward pass and changes nothing else."""
    import torch

    from omnisched.learner.grpo import group_advantages

    rewards = torch.tensor([g.rewards for g in groups])
    adv = group_advantages(rewards, scale=cfg.scale_advantages, eps=cfg.adv_eps)
    samples = [
        TrainSample(
            g.prompt_ids,
            ids,
            float(adv[i, j]),
            g.logprobs[j] if g.logprobs else None,
            domain=g.domain,
        )
        for i, g in enumerate(groups)
        for j, ids in enumerate(g.completion_ids)
        if cfg.kl_coef > 0 or float(adv[i, j]) != 0.0
    ]
    return TrainBatch(
        samples=samples,
        num_seqs=sum(len(g.completion_ids) for g in groups),
        num_tokens=sum(len(ids) for g in groups for ids in g.completion_ids),
    )
