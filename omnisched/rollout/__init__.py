"""Rollout engines: generate completions with logprobs and entropies behind one protocol.

Engines register lazily, so choosing or validating `rollout.backend` imports no torch or vLLM.
"""

from typing import Any

from omnisched.registry import Registry
from omnisched.rollout.base import Completion, RolloutEngine, SamplingParams

ENGINES: Registry = Registry("rollout engine", "omnisched.rollout_engines")
ENGINES.add_lazy("hf", "omnisched.rollout.hf:HFEngine")
ENGINES.add_lazy("vllm", "omnisched.rollout.vllm_engine:VLLMEngine")

__all__ = ["ENGINES", "Completion", "HFEngine", "RolloutEngine", "SamplingParams"]


def __getattr__(name: str) -> Any:
    if name == "HFEngine":
        return ENGINES.get("hf")
    raise AttributeError(f"module 'omnisched.rollout' has no attribute {name!r}")
