"""Learners: GRPO optimizer steps behind one protocol, found by name (`learner.backend`).

The GRPO maths (`omnisched.learner.grpo`) and the backends import torch, so they load on first
use; the contracts (`Learner`, `TrainSample`) and the registry do not.
"""

from importlib import import_module
from typing import Any

from omnisched.learner.base import Learner, TrainSample
from omnisched.registry import Registry

LEARNERS: Registry[type] = Registry("learner", "omnisched.learners")
LEARNERS.add_lazy("torch", "omnisched.learner.torch_learner:TorchLearner")
LEARNERS.add_lazy("deepspeed", "omnisched.learner.deepspeed_learner:DeepSpeedLearner")

_GRPO = (
    "LOSS_AGGS",
    "aggregate",
    "group_advantages",
    "grpo_loss",
    "grpo_token_loss",
    "k3_kl",
    "masked_mean",
    "token_entropy",
    "token_logprobs",
    "token_logprobs_and_entropy",
)
__all__ = ["LEARNERS", "Learner", "TorchLearner", "TrainSample", *_GRPO]


def __getattr__(name: str) -> Any:
    if name in _GRPO:
        return getattr(import_module("omnisched.learner.grpo"), name)
    if name == "TorchLearner":
        return LEARNERS.get("torch")
    raise AttributeError(f"module 'omnisched.learner' has no attribute {name!r}")
