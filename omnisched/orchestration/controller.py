"""The single controller: the driver loop of the paper's algorithm.

warm start -> baseline eval -> for each phase: policy picks domain(s) -> GRPO steps
(sample groups: draw, generate G, hybrid reward -> learner step -> weight sync; `pipeline`)
-> checkpoint -> eval every domain -> scheduler records R, entropy -> report

The pieces it drives each have a module: `sft.warm_start`, `RolloutPool`, `RewardPool`,
`GroupSampler`, `LearnerGroup`, `Evaluator`, the scheduler service, `checkpoint`.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from omnisched.config.schema import Recipe
from omnisched.domains import Domain, build_domains
from omnisched.errors import OmniError
from omnisched.metrics import MetricsLogger, write_report
from omnisched.orchestration import sft
from omnisched.orchestration.backend import Backend, make_backend
from omnisched.orchestration.checkpoint import ResumePoint, resume_point, write_checkpoint
from omnisched.orchestration.evaluator import Evaluator
from omnisched.orchestration.learner_group import LearnerGroup, check_resume_world_size
from omnisched.orchestration.pipeline import StepRunner
from omnisched.orchestration.placement import plan_placement, seats, unsupported_by_controller
from omnisched.orchestration.recovery import run_with_restarts
from omnisched.orchestration.reward_pool import reward_pool
from omnisched.orchestration.rollout_pool import RolloutPool
from omnisched.orchestration.sampler import GroupSampler, mixture_counts
from omnisched.orchestration.services import SchedulerHandle, SchedulerService
from omnisched.schedule.state import Evaluation, SchedulerState

Progress = Callable[[str, dict[str, Any]], None]
__all__ = ["Controller", "mixture_counts"]


class Controller:
    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path,
        progress: Progress | None = None,
        resume: bool = False,
    ) -> None:
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.progress = progress or (lambda event, info: None)
        self.rng = random.Random(recipe.run.seed)  # the prompt sampler's, checkpointed
        self.domains: dict[str, Domain] = build_domains(recipe)
        self.step = 0
        self.timings: dict[str, float] = {"eval_s": 0.0, "train_s": 0.0, "warm_start_s": 0.0}
        self.start: ResumePoint | None = None
        self.learner_restarts = 0  # automatic resumes after a learner rank died (`recovery`)

    # ---- setup ----------------------------------------------------------------------------
    def setup(self, backend: Backend) -> None:
        r = self.recipe
        problems = unsupported_by_controller(r)
        if problems:
            raise OmniError("; ".join(problems))
        self.backend = backend
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "recipe.yaml").write_text(yaml.safe_dump(r.model_dump(mode="json")))
        t0 = time.perf_counter()
        self.model_path = sft.warm_start(r, self.domains, backend, self.run_dir, self.progress)
        self.timings["warm_start_s"] = time.perf_counter() - t0
        state_path = self.run_dir / "scheduler_state.json"
        if self.resume:
            self.start = resume_point(self.run_dir, lambda: _evaluated(state_path))
        if self.start:
            self._restore(self.start)
            check_resume_world_size(self.start.path, r.placement.learner_workers)
        weights = str(self.start.path) if self.start else self.model_path
        # one placement group holds every actor's resources before any actor starts
        plan = plan_placement(r)
        backend.reserve(plan.bundles, plan.strategy)
        where = seats(r, plan)
        bundles = [s.bundle for s in where["rollout"]]
        self.rollout = RolloutPool(backend, r, weights, bundles, where["rollout"])
        self.rewards = reward_pool(backend, r, self.domains, [s.bundle for s in where["reward"]])
        self.learner = LearnerGroup(backend, r, weights, where["learner"])
        if self.start:
            self.learner.load_trainer_state(weights)
        self.rollout.follow(self.learner)
        if self.resume and state_path.is_file():
            state = SchedulerState.load(state_path)
        else:
            state = SchedulerState(
                domains=list(self.domains),
                kinds={n: d.kind for n, d in self.domains.items()},
                policy=r.schedule.policy,
                total_phases=r.schedule.phases or len(self.domains),
            )
        worker = backend.spawn(SchedulerService, state, r.schedule, str(state_path), num_cpus=0)
        self.scheduler = SchedulerHandle(backend, worker)
        self.metrics = MetricsLogger(self.run_dir)
        self.sampler = GroupSampler(r, self.domains, self.rng, self.rollout, self.rewards)
        self.evaluator = Evaluator(r, self.domains, self.rollout, self.rewards, self.metrics)
        self.steps = StepRunner(self)

    def _restore(self, start: ResumePoint) -> None:
        self.step = start.step
        self.timings.update(start.timings)
        version, internal, gauss = start.rng
        self.rng.setstate((version, tuple(internal), gauss))
        self.progress("resume", {"step": self.step, "checkpoint": str(start.path)})

    def checkpoint(self, phase: int, step_in_phase: int) -> None:
        state = {
            "step": self.step,
            "phase": phase,
            "step_in_phase": step_in_phase,
            "rng": list(self.rng.getstate()),
            "timings": self.timings,
            "scheduler": self.scheduler.state().to_dict(),
        }
        write_checkpoint(
            self.run_dir / "checkpoints", self.step, state, self.learner.save_checkpoint
        )

    @property
    def restarts(self) -> dict[str, int]:
        pools = {"rollout": self.rollout.restarts, "reward": self.rewards.restarts}
        return {**pools, "learner": self.learner_restarts}

    # ---- one GRPO step and one evaluation ----------------------------------------------------
    def train_step(
        self, domains: list[str], mixture: dict[str, float] | None = None, ahead: bool = False
    ) -> dict[str, Any]:
        """One GRPO step (`pipeline.StepRunner`; `ahead`: the next batch is made meanwhile)."""
        return self.steps.step(domains, mixture, ahead)

    def evaluate(self, label: str) -> Evaluation:
        t0 = time.perf_counter()
        result = self.evaluator.evaluate(label, self.step)
        self.timings["eval_s"] += time.perf_counter() - t0
        info = {"label": label, "accuracy": result.accuracy, "entropy": result.entropy}
        self.progress("eval", info)
        return result

    # ---- the run ---------------------------------------------------------------------------
    def run(self, backend: Backend | None = None) -> Path:
        """Train the recipe; returns the run directory. Without `backend`, one is built from
        `recipe.ray` and shut down at the end (actors and placement group with it); a given
        backend stays up, with this run's actors, until its owner shuts it down. A learner rank
        that dies restarts the run from its last checkpoint (`recovery.run_with_restarts`)."""
        owned = backend is None
        backend = make_backend(self.recipe.ray) if backend is None else backend
        try:
            return run_with_restarts(self, backend)
        finally:
            if owned:
                backend.shutdown()

    def train(self, backend: Backend) -> Path:
        """Set up, then every phase left; the report's path."""
        r = self.recipe
        t_start = time.perf_counter()
        fresh = not self.run_dir.exists()
        try:
            self.setup(backend)
        except BaseException:
            if fresh:  # a set-up error leaves no half-made run directory behind
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise
        sched = self.scheduler.state()
        if sched.baseline is None:
            self.scheduler.record_baseline(self.evaluate("base"))
        total_phases = self.scheduler.planned_phases()  # + probe phases
        first = len(sched.completed())
        resume_at = 0  # steps of the first phase already taken before a resume
        if self.start and self.start.phase == first:
            resume_at = self.start.step_in_phase
        for phase in range(first, total_phases):
            self._phase(phase, total_phases, resume_at if phase == first else 0)
        self.learner.save(str(self.run_dir / "checkpoints" / "final"))
        wall = time.perf_counter() - t_start
        self.metrics.log(self.step, {**self.timings, "wall_s": wall}, kind="timing")
        self.metrics.close()
        return write_report(
            self.run_dir, self.scheduler.state(), title=f"omnisched run `{r.run.name}`"
        )

    def _phase(self, phase: int, total: int, resume_at: int) -> None:
        """One phase: the decision, its GRPO steps (checkpointed), its evaluation."""
        decision = self.scheduler.next_phase()
        steps = decision.steps or self.recipe.schedule.steps_per_phase
        mixture = decision.mixture
        info = {"index": phase, "total": total, "domains": decision.domains}
        self.progress("phase", {**info, "reason": decision.reason})
        every = self.recipe.run.checkpoint_every
        for s in range(resume_at, steps):
            # overlap: the next batch is made meanwhile, within the phase and up to a checkpoint
            ahead = s + 1 < steps and not (every and (s + 1) % every == 0)
            rec = self.train_step(decision.domains, mixture, ahead)
            self.progress("step", {"phase": phase, "step": s, "total": steps, **rec})
            # online policies (bandit) re-weight the domains after every step
            mixture = self.scheduler.observe_step(self.step, rec) or mixture
            if every and (s + 1) % every == 0 and s + 1 < steps:
                self.checkpoint(phase, s + 1)
        self.learner.save(str(self.run_dir / "checkpoints" / f"phase-{phase}"))
        self.scheduler.finish_phase(steps, self.evaluate(f"phase-{phase}"))
        self.checkpoint(phase + 1, 0)


def _evaluated(state_path: Path) -> list[str]:
    """Labels of the evaluations a saved scheduler state holds (kept in metrics on resume)."""
    if not state_path.is_file():
        return []
    state = SchedulerState.load(state_path)
    done = len(state.completed())
    return (["base"] if state.baseline else []) + [f"phase-{k}" for k in range(done)]
