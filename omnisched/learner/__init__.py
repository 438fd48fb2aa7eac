"""Learners: GRPO optimizer steps behind one protocol, found by name (`learner.backend`)."""

from omnisched.learner.base import Learner, TrainSample
from omnisched.learner.grpo import (
    LOSS_AGGS,
    aggregate,
    group_advantages,
    grpo_loss,
    grpo_token_loss,
    k3_kl,
    masked_mean,
    token_entropy,
    token_logprobs,
    token_logprobs_and_entropy,
)
from omnisched.learner.torch_learner import TorchLearner
from omnisched.registry import Registry

LEARNERS: Registry[type] = Registry("learner", "omnisched.learners")
LEARNERS.add("torch", TorchLearner)

__all__ = [
    "LEARNERS",
    "LOSS_AGGS",
    "Learner",
    "TorchLearner",
    "TrainSample",
    "aggregate",
    "group_advantages",
    "grpo_loss",
    "grpo_token_loss",
    "k3_kl",
    "masked_mean",
    "token_entropy",
    "token_logprobs",
    "token_logprobs_and_entropy",
]
