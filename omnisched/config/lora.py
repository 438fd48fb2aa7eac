"""`learner.lora`: low-rank adapters (LoRA, Hu et al. 2021) trained through `peft` instead of the
full weights; the rollout engines and checkpoints get the merged weights W + B @ A * alpha / r."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

ALL_LINEAR = "all-linear"


class LoraConfig(BaseModel):
    """Rank, scale, dropout and which modules get adapters (peft's `LoraConfig` fields)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)  # as schema.Strict

    r: int = Field(16, gt=0, description="rank of each adapter's A [r, in] and B [out, r]")
    alpha: float = Field(32.0, gt=0, description="the update is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input")
    target_modules: list[str] | str = Field(
        ALL_LINEAR,
        description="module names (suffixes: `q_proj`, `mlp.down_proj`) or one regular "
        "expression matching whole names; `all-linear`: every linear layer but the output head",
    )

    @field_validator("target_modules", mode="before")
    @classmethod
    def _names_or_pattern(cls, value: Any) -> Any:
        names = isinstance(value, list) and value and all(isinstance(x, str) and x for x in value)
        if not (names or (isinstance(value, str) and value)):
            raise ValueError(f"give module names or one regular expression, got {value!r}")
        return value
