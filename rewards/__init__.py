"""Rule-based verifiers and their registry.

A verifier is a TRL-compatible reward function `fn(completions: list[str], **columns) ->
list[float]` (dataset columns as keyword arguments, unknown ones ignored). Ours return `Score`
floats that carry a `reason` when they are not full marks. Find one by name with
`rewards.get(name)`; add one with `@rewards.register(name)` or from another package through the
entry-point group `omnisched.verifiers`. `score_batch` runs a verifier with bounded concurrency
and per-item timeouts, as the reward workers of a run do.
"""

from rewards import code, math_answer, shaping, text  # noqa: F401  (registers the built-ins)
from rewards.execution import isolated, score_batch
from rewards.registry import VERIFIERS, get, names, register
from rewards.score import Score

__all__ = ["VERIFIERS", "Score", "get", "isolated", "names", "register", "score_batch"]
