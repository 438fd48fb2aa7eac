"""Workers that hold no model (no torch import, so their Ray actors stay small): the reward
worker and the scheduler service."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omnisched.config.schema import RewardComponent
from omnisched.errors import PluginError
from omnisched.orchestration.backend import Backend, ask
from omnisched.schedule.bandit import drawn_exposure
from omnisched.schedule.policies import POLICIES, Decision, Policy
from omnisched.schedule.state import Evaluation, PhaseRecord, SchedulerState
from omnisched.scoring import RewardScorer, ScoredBatch


class RewardWorker:
    """Scores completions of any domain with that domain's hybrid reward."""

    def __init__(
        self, specs: Mapping[str, Sequence[RewardComponent]], max_workers: int, timeout: float
    ) -> None:
        self.scorers = {
            d: RewardScorer(c, max_workers, timeout, domain=d) for d, c in specs.items()
        }

    def score(
        self,
        domain: str,
        prompts: Sequence[str],
        completions: Sequence[str],
        columns: dict,
        group_ids: Sequence[str] | None = None,
    ) -> ScoredBatch:
        return self.scorers[domain].score(prompts, completions, columns, group_ids)


class SchedulerService:
    """The scheduler: records evaluations, asks the policy what to train next, persists state.

    Every mutation is saved atomically to `state_path`, so a resumed run restores it exactly.
    Controller protocol: `record_baseline` once; then `planned_phases()` times: `next_phase()`,
    `decision.steps or steps_per_phase` train steps (drawing prompts by `decision.mixture` when it
    is set, calling `observe_step` after each and drawing the next step by what it returns), then
    `finish_phase(steps_run, evaluation)`. A phase's exposure (step-equivalents per domain) is
    what its steps drew (`prompts/<domain>` / prompts_per_step in the step statistics), so
    dynamic sampling's extra draws and unequal domain weights count; without those counts
    (the simulator) a fixed phase splits its steps evenly over the domains it trained.
    """

    DRAWN = "drawn_exposure"  # policy_state key: the last step charged to a fixed phase

    def __init__(self, state: SchedulerState, cfg: Any, state_path: str | None) -> None:
        self.state = state
        self.prompts_per_step = cfg.prompts_per_step
        self.policy = POLICIES.get(state.policy)(cfg)
        if not isinstance(self.policy, Policy):
            raise PluginError(
                f"scheduler policy '{state.policy}' ({type(self.policy).__name__}) must subclass "
                "omnisched.schedule.Policy"
            )
        self.path = Path(state_path) if state_path else None  # None: in memory (simulations)
        self._save()

    def _save(self) -> None:
        if self.path is not None:
            self.state.save(self.path)

    def planned_phases(self) -> int:
        """Phases the run will have: the recipe's count plus those the policy adds (probes)."""
        return self.state.total_phases + self.policy.extra_phases(self.state)

    def record_baseline(self, evaluation: Evaluation) -> None:
        self.state.baseline = evaluation
        self._save()

    def next_phase(self) -> Decision:
        open_phase = [p for p in self.state.phases if p.result is None]
        if open_phase:  # resumed mid-phase: the decision already made stands
            p = open_phase[0]
            return Decision(
                p.trained,
                p.reason,
                p.predicted_final,
                mixture=p.mixture,
                steps=p.steps or None,
                probe=p.probe,
                planned_order=p.planned_order,
                predicted_sd=p.predicted_sd,
                planned_steps=p.planned_steps,
            )
        decision = self.policy.next_phase(self.state)
        self.state.phases.append(
            PhaseRecord(
                index=len(self.state.phases),
                trained=decision.domains,
                reason=decision.reason,
                predicted_final=decision.predicted_final,
                steps=decision.steps or 0,  # planned; finish_phase records the steps run
                probe=decision.probe,
                planned_order=decision.planned_order,
                mixture=decision.mixture,
                predicted_sd=decision.predicted_sd,
                planned_steps=decision.planned_steps,
            )
        )
        self._save()
        return decision

    def observe_step(self, step: int, stats: dict[str, Any]) -> dict[str, float] | None:
        """Per-step statistics (`reward/<domain>`, `entropy`, `samples_trained`, ...) for online
        policies; returns the sampling mixture for the next step, None for phase policies."""
        numeric = {k: float(v) for k, v in stats.items() if isinstance(v, int | float)}
        mixture = self.policy.observe_step(self.state, step, numeric)
        if mixture is None:
            # in memory only: the file follows at the phase's end, and a checkpoint holds the
            # state as it is at its step (a save here cost ~40 ms a step: per-item scores)
            self._charge_drawn(step, numeric)
            return None
        self.state.phases[-1].mixture = mixture
        self._save()
        return mixture

    def _charge_drawn(self, step: int, stats: dict[str, float]) -> bool:
        """A fixed phase's step: add the prompts it drew to the open phase's exposure (online
        policies charge their own); a replayed step id (resume) changes nothing."""
        drawn = drawn_exposure(stats, self.state.domains, self.prompts_per_step)
        phases = self.state.phases
        if drawn is None or not phases or phases[-1].result is not None:
            return False
        memo = self.state.policy_state.setdefault(self.DRAWN, {"last_step": -1})
        if step <= memo["last_step"]:
            return False
        memo["last_step"] = step
        exposure = phases[-1].exposure
        for d, x in drawn.items():
            if x:
                exposure[d] = exposure.get(d, 0.0) + x
        return True

    def finish_phase(self, steps: int, evaluation: Evaluation) -> None:
        phase = self.state.phases[-1]
        phase.steps = steps
        phase.result = evaluation
        if not phase.exposure:  # no draws counted: steps split evenly over the trained domains
            phase.exposure = {d: steps / len(phase.trained) for d in phase.trained}
        self._save()

    def get_state(self) -> dict:
        return self.state.to_dict()


class SchedulerHandle:
    """The controller's typed view of the `SchedulerService` worker (a Ray actor or inline)."""

    def __init__(self, backend: Backend, worker: Any) -> None:
        self.backend = backend
        self.worker = worker

    def state(self) -> SchedulerState:
        return SchedulerState.from_dict(ask(self.backend, self.worker, SchedulerService.get_state))

    def record_baseline(self, evaluation: Evaluation) -> None:
        ask(self.backend, self.worker, SchedulerService.record_baseline, evaluation)

    def planned_phases(self) -> int:
        return ask(self.backend, self.worker, SchedulerService.planned_phases)

    def next_phase(self) -> Decision:
        return ask(self.backend, self.worker, SchedulerService.next_phase)

    def observe_step(self, step: int, stats: dict[str, Any]) -> dict[str, float] | None:
        return ask(self.backend, self.worker, SchedulerService.observe_step, step, stats)

    def finish_phase(self, steps: int, evaluation: Evaluation) -> None:
        ask(self.backend, self.worker, SchedulerService.finish_phase, steps, evaluation)
