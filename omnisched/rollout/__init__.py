"""Rollout engines: generate completions with logprobs and entropies behind one protocol."""

from omnisched.registry import Registry
from omnisched.rollout.base import Completion, RolloutEngine, SamplingParams
from omnisched.rollout.hf import HFEngine

ENGINES: Registry = Registry("rollout engine", "omnisched.rollout_engines")
ENGINES.add("hf", HFEngine)

__all__ = ["ENGINES", "Completion", "HFEngine", "RolloutEngine", "SamplingParams"]
