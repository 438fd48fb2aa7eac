"""What the torch and DeepSpeed learners set up alike: one constructor (each backend adds
its `_setup`) and `logprobs`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from transformers import PreTrainedModel

from omnisched.config.schema import LearnerConfig
from omnisched.learner import lora
from omnisched.learner.base import TrainSample
from omnisched.learner.step import sample_logprobs
from omnisched.model.precision import resolve_bf16


class LearnerBase(ABC):
    """`cfg` with bf16 "auto" resolved, the padding id, Dr.GRPO's constant normaliser
    (`max_completion_len`: the rollout's max_new_tokens; None uses each step's longest
    completion), the rollout's sampling `temperature` (logprobs, policy and reference, are those
    of softmax(logits / temperature)), and the policy with its frozen reference: copied before
    any casting, or with `cfg.lora` the peft model's base (`lora.with_reference`)."""

    model: PreTrainedModel

    def __init__(
        self,
        model: PreTrainedModel,
        cfg: LearnerConfig,
        pad_token_id: int,
        ref_model: PreTrainedModel | None = None,
        max_completion_len: int | None = None,
        temperature: float = 1.0,
    ) -> None:
        self.cfg = cfg.model_copy(update={"bf16": resolve_bf16(cfg.bf16)})
        self.pad_token_id = pad_token_id
        self.max_completion_len = max_completion_len
        self.temperature = temperature
        self.model, self.ref_model = lora.with_reference(model, ref_model, self.cfg)
        self._setup()

    @abstractmethod
    def _setup(self) -> None:
        """The backend's own set-up (optimizer, engine), run at the end of `__init__`."""

    def logprobs(self, samples: Sequence[TrainSample]) -> list[list[float]]:
        """Completion-token logprobs of the current policy at the sampling temperature."""
        return sample_logprobs(self.model, samples, self.cfg, self.pad_token_id, self.temperature)
