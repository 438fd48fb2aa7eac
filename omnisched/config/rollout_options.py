"""Option groups of `rollout` (dynamic sampling, the HF engine), apart from schema.py to keep it
short; schema.py re-exports them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from omnisched.config.strict import Strict

COMPILE_NEEDS_MASK = "rollout.hf.compile: true needs rollout.hf.decode: mask or auto"


class DynamicSamplingConfig(Strict):
    """DAPO's dynamic sampling: groups whose rewards all tie carry no signal; draw more prompts
    and refill the batch with groups that do, for at most `max_rounds` extra generation rounds
    (a batch still short after them trains on what it has). `true` / `false` set `enabled`."""

    enabled: bool = False
    max_rounds: int = Field(3, ge=0, description="extra generation rounds per step at most")

    @model_validator(mode="before")
    @classmethod
    def _from_bool(cls, data: Any) -> Any:
        return {"enabled": data} if isinstance(data, bool) else data


class HFEngineConfig(Strict):
    """How the `hf` rollout engine decodes; other backends ignore it."""

    decode: Literal["auto", "drop", "mask"] = Field(
        "auto",
        description="drop: finished rows leave the batch and the KV cache is compacted (fastest "
        "on CPU); mask: finished rows are masked in a static KV cache, one host sync every 16 "
        "steps (for GPUs); auto: mask on CUDA or with compile, else drop",
    )
    compile: bool = Field(
        False, description="torch.compile the masked decode step (CUDA graphs on CUDA)"
    )

    @model_validator(mode="after")
    def _compile_needs_mask(self) -> HFEngineConfig:
        if self.compile and self.decode == "drop":
            raise ValueError(COMPILE_NEEDS_MASK)
        return self
