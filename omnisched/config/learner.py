"""The learner's config: the GRPO objective's variants, micro-batching and the backends'
options (`learner:` in a recipe)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from omnisched.config.lora import LoraConfig
from omnisched.config.strict import Strict

ZERO3_CHUNKS = (
    "learner.logits_chunk_tokens needs learner.deepspeed.zero_stage <= 2 (ZeRO-3 re-gathers "
    "the LM head at each call and loses the gradients of the chunks recomputed in backward)"
)


class DeepSpeedConfig(Strict):
    """Options of the `deepspeed` learner backend; the torch backend ignores them."""

    zero_stage: int = Field(
        2,
        ge=0,
        le=3,
        description="what ZeRO shards across ranks: 0 nothing, 1 optimizer states, 2 + gradients, "
        "3 + parameters",
    )
    gradient_accumulation_steps: int | None = Field(
        None,
        ge=1,
        description="micro-batches per optimizer step; None = all of a train_step in one step",
    )
    offload_optimizer: bool = Field(False, description="keep optimizer states in CPU memory")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="DeepSpeed config entries merged over the generated config (dicts merge)",
    )


class LearnerConfig(Strict):
    backend: str = "torch"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.99)
    max_grad_norm: float = Field(1.0, gt=0)
    clip_eps: float = Field(0.2, gt=0, description="PPO ratio clip (lower)")
    clip_eps_high: float | None = Field(None, gt=0, description="DAPO clip-higher; None = clip_eps")
    kl_coef: float = Field(0.0, ge=0, description="KL to the frozen reference; 0 disables it")
    kl_estimator: Literal["k1", "k2", "k3"] = Field(
        "k3", description="per-token KL estimate (Schulman 2020): k3 as GRPO/TRL, k1, k2"
    )
    kl_bias_correction: bool = Field(
        False,
        description="multiply the KL term by the importance ratio (TRL use_bias_correction_kl, "
        "its default since 1.16): the unbiased reverse-KL gradient",
    )
    loss_agg: Literal["token-mean", "sequence-mean", "dr-grpo"] = "token-mean"
    importance_sampling: Literal["token", "sequence"] = Field(
        "token", description="clip per-token ratios (PPO/GRPO) or GSPO's per-sequence ratio"
    )
    scale_advantages: bool = Field(True, description="divide by group std (False = Dr.GRPO)")
    adv_eps: float = Field(1e-4, gt=0, description="A = (r - mean) / (std + adv_eps), as TRL")
    ppo_epochs: int = Field(1, ge=1)
    micro_batch_size: int = Field(
        64, ge=1, description="samples per micro-batch (when micro_batch_tokens is not set)"
    )
    micro_batch_tokens: int | None = Field(
        None,
        ge=1,
        description="micro-batches by a token budget instead of a sample count: samples sorted "
        "longest first, each micro-batch as many as fit in rows x longest (prompt + completion) "
        "<= this many tokens (padding included); None: micro_batch_size samples each",
    )
    logits_chunk_tokens: int | None = Field(
        None,
        ge=1,
        description="compute logprobs and entropies over this many completion tokens at a time, "
        "recomputing each chunk's logits in the backward pass: only [chunk, vocab] logits are "
        "ever held (a 151,936-token vocabulary); None: the whole micro-batch's at once",
    )
    bf16: bool | Literal["auto"] = Field(
        "auto",
        description="bf16 autocast in the learner; auto = where the hardware runs it natively",
    )
    grad_alignment: bool = Field(
        False,
        description="measure the cosine between domains' policy gradients each step (on the "
        "last decoder layer and final norm; the `tac` policy turns it on)",
    )
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    lora: LoraConfig | None = Field(None, description="train LoRA adapters; None: all weights")

    @model_validator(mode="after")
    def _chunks_need_whole_head(self) -> LearnerConfig:
        stage = self.deepspeed.zero_stage
        if self.logits_chunk_tokens and self.backend == "deepspeed" and stage == 3:
            raise ValueError(ZERO3_CHUNKS)
        return self
