"""Workers with narrow methods. Plain Python: Ray wraps them as actors, or they run inline."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from omnisched.config.schema import LearnerConfig, RewardComponent
from omnisched.learner.base import TrainSample
from omnisched.rollout.base import Completion, SamplingParams
from omnisched.schedule.policies import POLICIES, Decision
from omnisched.schedule.state import Evaluation, PhaseRecord, SchedulerState
from omnisched.scoring import RewardScorer, ScoredBatch

log = logging.getLogger(__name__)


def _quiet_worker(threads: int | None) -> None:
    """Thread count, and no per-load progress bars from transformers in the run's output."""
    import transformers

    if threads:
        torch.set_num_threads(threads)
    transformers.utils.logging.disable_progress_bar()
    for name in ("transformers", "datasets", "torch.distributed", "DeepSpeed"):
        logging.getLogger(name).setLevel(logging.ERROR)


class RolloutWorker:
    """Owns one rollout engine: `generate` and `update_weights`."""

    def __init__(self, backend: str, model_path: str, dtype: str, threads: int | None) -> None:
        from omnisched.rollout import ENGINES

        _quiet_worker(threads)
        self.engine = ENGINES.get(backend)(model_path, dtype=dtype, threads=threads)

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        return self.engine.generate(prompts, params)

    def update_weights(self, state_dict: Mapping[str, torch.Tensor]) -> bool:
        self.engine.update_weights(state_dict)
        return True


class RewardWorker:
    """Scores completions of any domain with that domain's hybrid reward."""

    def __init__(
        self, specs: Mapping[str, Sequence[RewardComponent]], max_workers: int, timeout: float
    ) -> None:
        _quiet_worker(None)
        self.scorers = {d: RewardScorer(c, max_workers, timeout) for d, c in specs.items()}

    def score(
        self, domain: str, prompts: Sequence[str], completions: Sequence[str], columns: dict
    ) -> ScoredBatch:
        return self.scorers[domain].score(prompts, completions, columns)


class LearnerWorker:
    """Owns the policy being trained: `train_step`, `state_dict`, `save`."""

    def __init__(
        self,
        backend: str,
        model_path: str,
        cfg: LearnerConfig,
        threads: int | None,
        seed: int,
        max_completion_len: int | None = None,
    ) -> None:
        from omnisched.learner import LEARNERS
        from omnisched.model import load_model

        _quiet_worker(threads)
        torch.manual_seed(seed)
        model, tokenizer = load_model(model_path, dtype="float32")
        model.to("cuda" if torch.cuda.is_available() else "cpu")
        self.learner = LEARNERS.get(backend)(
            model, cfg, pad_token_id=tokenizer.pad_token_id, max_completion_len=max_completion_len
        )
        self.tokenizer = tokenizer

    def train_step(self, samples: Sequence[TrainSample]) -> dict[str, float]:
        return self.learner.train_step(samples)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.learner.state_dict()

    def save(self, path: str) -> str:
        self.learner.save(Path(path))
        self.tokenizer.save_pretrained(path)
        return path


class SchedulerService:
    """The scheduler: records evaluations, asks the policy what to train next, persists state.

    Every mutation is saved atomically to `state_path`, so a resumed run restores it exactly.
    """

    def __init__(self, state: SchedulerState, cfg: Any, state_path: str) -> None:
        self.state = state
        self.policy = POLICIES.get(state.policy)(cfg)
        self.path = Path(state_path)
        self.state.save(self.path)

    def record_baseline(self, evaluation: Evaluation) -> None:
        self.state.baseline = evaluation
        self.state.save(self.path)

    def next_phase(self) -> Decision:
        open_phase = [p for p in self.state.phases if p.result is None]
        if open_phase:  # resumed mid-phase: the decision already made stands
            p = open_phase[0]
            return Decision(p.trained, p.reason, p.predicted_final)
        decision = self.policy.next_phase(self.state)
        self.state.phases.append(
            PhaseRecord(
                index=len(self.state.phases),
                trained=decision.domains,
                reason=decision.reason,
                predicted_final=decision.predicted_final,
            )
        )
        self.state.save(self.path)
        return decision

    def finish_phase(self, steps: int, evaluation: Evaluation) -> None:
        phase = self.state.phases[-1]
        phase.steps = steps
        phase.result = evaluation
        self.state.save(self.path)

    def get_state(self) -> dict:
        return self.state.to_dict()
