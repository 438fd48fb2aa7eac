"""The rollout engines: generation spread over them, and weight sync from the learner.

Weights reach the engines through Ray's object store (the state dict as a future the driver never
opens) or, with `rollout.weight_sync: broadcast`, over a process group of learner rank 0 and
every engine (only names, dtypes and shapes travel by RPC). A restarted engine cannot join the
existing group, so the pool then falls back to the object store for the rest of the run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from omnisched.config.schema import Recipe
from omnisched.orchestration.backend import Backend
from omnisched.orchestration.pool import WorkerPool
from omnisched.orchestration.workers import RolloutWorker
from omnisched.rollout.base import Completion, SamplingParams

if TYPE_CHECKING:
    from omnisched.orchestration.learner_group import LearnerGroup

log = logging.getLogger(__name__)


class RolloutPool(WorkerPool):
    kind = "rollout"

    def __init__(
        self, backend: Backend, recipe: Recipe, weights: str, bundles: Sequence[int | None]
    ) -> None:
        self.recipe = recipe
        self.weights = weights  # the folder a (re)started engine loads first
        self.learner: LearnerGroup | None = None
        self.weight_meta: list | None = None  # set while the broadcast group is whole
        super().__init__(backend, bundles)

    def spawn(self, index: int) -> Any:
        r = self.recipe
        return self.backend.spawn(
            RolloutWorker,
            r.rollout.backend,
            self.weights,
            r.model.dtype,
            r.run.threads,
            num_cpus=r.rollout.cpus_per_worker,
            num_gpus=r.rollout.gpus_per_worker,
            bundle=self.bundles[index],
        )

    def prepare_replacement(self, index: int, worker: Any) -> None:
        if self.weight_meta is not None:
            log.warning("rollout weights now sync through the object store, not broadcast")
            self.weight_meta = None
        if self.learner is not None:  # the learner's current weights, not the start folder's
            state = self.learner.state_dict(self.recipe.model.dtype)
            self.backend.gather([self.backend.call(worker, RolloutWorker.update_weights, state)])

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        """`params.n` completions per prompt, prompts dealt round-robin over the engines."""
        k = len(self.workers)
        chunks = [prompts[i::k] for i in range(k)]
        results = self.run(
            [
                (i, RolloutWorker.generate, (chunk, params))
                for i, chunk in enumerate(chunks)
                if chunk
            ]
        )
        out: list[list[Completion]] = [[] for _ in prompts]
        for i, res in enumerate(results):
            out[i::k] = res
        return out

    def follow(self, learner: LearnerGroup) -> None:
        """Sync from `learner` from now on (and join its broadcast group when the recipe asks)."""
        self.learner = learner
        if self.recipe.rollout.weight_sync == "broadcast":
            self.weight_meta = self._join_broadcast(learner)

    def sync_weights(self) -> None:
        """Learner -> engines: by broadcast while the group is whole, else the state dict through
        the object store (a future: learner -> object store -> engines, unopened by the driver)."""
        assert self.learner is not None, "follow(learner) first"
        if self.weight_meta is not None:
            sent = self.learner.broadcast_weights()
            received = [
                self.backend.call(w, RolloutWorker.receive_weights, self.weight_meta)
                for w in self.workers
            ]
            self.backend.gather([*received, sent])
            return
        state = self.learner.state_dict(self.recipe.model.dtype)  # as the engines hold it
        self.on_all(RolloutWorker.update_weights, state)

    def _join_broadcast(self, learner: LearnerGroup) -> list:
        """Learner rank 0 hosts the group on its node and every engine joins at once, one group
        rank each (engines start without tensor parallelism)."""
        host, port = learner.weight_group_address()
        world_size = 1 + len(self.workers)
        meta = learner.join_weight_group(host, port, world_size)
        joins = [
            self.backend.call(w, RolloutWorker.join_weight_group, host, port, world_size, 1 + i)
            for i, w in enumerate(self.workers)
        ]
        # the engines' errors first: gather raises the first failed call's error in list order
        return self.backend.gather([*joins, meta])[-1]
