"""One GRPO step of the controller: sample a batch, train on it, sync the engines; with
`rollout.overlap: true`, the next step's batch is generated while the learner trains this one.

Overlap is one-step off-policy: the engines still hold the weights from before the step being
trained, so the batch they make is trained one optimizer step later, against the sampler's own
logprobs as the importance ratio's denominator (`ScoredGroup.logprobs`); staleness is bounded
to 1 because the engines are synced after every step, before the next generation starts. No
batch is generated ahead across a phase boundary (the next phase's domains are not decided
yet) or across a checkpoint (a resume restarts from a state with nothing in flight): those
steps are on-policy. An online policy's new mixture (`observe_step`) reaches the batch after
the one already made. The learner runs in a driver thread, so the same code overlaps Ray actors
and, with `ray.enabled: false`, the in-process workers (torch releases the GIL in its kernels).
A step stopped by `reward.max_error_rate` first writes the failing groups to rollouts.jsonl.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from omnisched.metrics.rollouts import write_groups
from omnisched.orchestration.sampler import RewardFailure, RolloutBatch

if TYPE_CHECKING:
    from omnisched.orchestration.controller import Controller
    from omnisched.orchestration.groups import Group


class StepRunner:
    """The controller's GRPO steps; `version` = optimizer steps taken = the policy version the
    engines hold after each sync. Each step's record says which version sampled its batch."""

    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl
        self.overlap = ctrl.recipe.rollout.overlap
        self.pending: tuple[RolloutBatch, int] | None = (
            None  # the next step's batch and its version
        )

    def step(
        self, domains: list[str], mixture: dict[str, float] | None, ahead: bool = False
    ) -> dict[str, Any]:
        """One step; with `ahead` (and overlap) the next step's batch, for the same domains and
        mixture, is generated while the learner trains this one."""
        c, r = self.ctrl, self.ctrl.recipe
        t0 = time.perf_counter()
        if self.pending is not None:
            batch, sampled_at = self.pending
        else:
            batch, sampled_at = self._sample(domains, mixture, c.step), c.step
        self.pending = None
        t_learn = time.perf_counter()
        c.rollout.sleep()  # colocated engines free the GPU for the learner (sleep_level)
        groups = [g.scored(sampler_logprobs=self.overlap) for g in batch.groups]
        if ahead and self.overlap:
            with ThreadPoolExecutor(1, thread_name_prefix="learner") as pool:
                learning = pool.submit(c.learner.train_groups, groups)
                try:  # the engines still hold version c.step: the next batch is one behind
                    self.pending = (self._sample(domains, mixture, c.step + 1), c.step)
                finally:
                    learn = learning.result()
        else:
            learn = c.learner.train_groups(groups)
        trained = int(learn.pop("samples_trained", 0))
        # wake; a batch whose groups all tie carried no gradient: weights are unchanged
        c.rollout.sync_weights(changed=bool(trained))
        t_end = time.perf_counter()
        record = self._record(batch, learn, trained, domains, t0, t_learn, t_end)
        record["policy_version/sampled"] = sampled_at
        record["policy_version/trained"] = c.step
        c.step += 1
        c.timings["train_s"] += t_end - t0
        c.metrics.log(c.step, record)
        every = r.run.log_rollouts_every
        if every and c.step % every == 0:
            self._log_groups(batch.groups, c.step)
        return record

    def _sample(
        self, domains: list[str], mixture: dict[str, float] | None, step: int
    ) -> RolloutBatch:
        """The batch for 0-based `step`; when the reward-failure check stops the run, the
        failing domain's groups go to rollouts.jsonl first (as that step's, 1-based)."""
        try:
            return self.ctrl.sampler.sample(domains, mixture, step)
        except RewardFailure as exc:
            self._log_groups(exc.groups, step + 1)
            raise

    def _log_groups(self, groups: list[Group], step: int) -> None:
        learner = self.ctrl.recipe.learner
        write_groups(
            self.ctrl.run_dir,
            groups,
            learner.adv_eps,
            learner.scale_advantages,
            kind="train",
            step=step,
        )

    def _record(
        self,
        batch: RolloutBatch,
        learn: dict[str, Any],
        trained: int,
        domains: list[str],
        t0: float,
        t_learn: float,
        t_end: float,
    ) -> dict[str, Any]:
        c = self.ctrl
        completions = [x for g in batch.drawn for x in g.completions]
        return {
            **batch.metrics(list(c.domains)),
            **{f"learner/{k}": v for k, v in learn.items()},
            "samples_trained": trained,
            **{f"restarts/{k}": v for k, v in c.restarts.items()},
            "completion_len": sum(len(x.token_ids) for x in completions) / len(completions),
            "entropy": sum(x.mean_entropy for x in completions) / len(completions),
            "time/generate_s": batch.generate_s,
            "time/score_s": batch.score_s,
            "time/learn_sync_s": t_end - t_learn,  # with overlap: the next batch's generation too
            "time/sync_s": c.rollout.last_sync_s,
            "time/step_s": t_end - t0,
            "domains": "+".join(domains),
        }
