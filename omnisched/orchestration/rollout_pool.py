"""The rollout engines: generation spread over them, sleep around learner steps, weight sync.

Weights reach the engines through Ray's object store (the state dict as a future the driver never
opens) or, with `rollout.weight_sync: broadcast`, over a process group of learner rank 0 and
every engine's workers (one group rank per tensor-parallel shard; only names, dtypes and shapes
travel by RPC). An engine that dies during a broadcast is seen at once (the backend's gather
fails fast); the group is then aborted through its store, so the parties still waiting stop
within a poll instead of the group's timeout, and the pool falls back to the object store for
the rest of the run, as it does for any restarted engine (it cannot join the existing group).

Engines that share GPUs with the learner (`placement.colocate`) sleep while it trains
(`rollout.sleep_level`): `sleep` before the learner step, and `sync_weights` wakes them
(after level 2, weights first, then the new weights, then the KV cache).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from omnisched.config.schema import Recipe
from omnisched.orchestration.backend import Backend
from omnisched.orchestration.placement import Seat, gpu_memory_utilization, sleep_level
from omnisched.orchestration.pool import WorkerPool
from omnisched.orchestration.workers import RolloutWorker
from omnisched.rollout.base import Completion, SamplingParams

if TYPE_CHECKING:
    from omnisched.orchestration.learner_group import LearnerGroup

log = logging.getLogger(__name__)


def engine_options(recipe: Recipe, seat: Seat) -> tuple[dict[str, Any], dict[str, str]]:
    """Keyword options for the engine (`VLLMEngine(**options)`) and the environment its worker
    sets before building it. A vLLM engine whose shards have a bundle each (colocated) runs
    vLLM's Ray executor there; one that holds its GPUs in one bundle runs them as processes."""
    ro = recipe.rollout
    options: dict[str, Any] = {}
    env: dict[str, str] = {}
    if ro.backend == "hf":  # the HF engine sleeps by offloading: nothing else to set up
        return {"decode": ro.hf.decode, "compile": ro.hf.compile}, env
    if ro.backend != "vllm":
        return options, env
    level = sleep_level(recipe)
    if level:  # vLLM's sleep mode is chosen when the engine starts
        options["sleep_level"] = level
    if ro.gpus_per_worker > 0:
        options["gpu_memory_utilization"] = gpu_memory_utilization(recipe)
    if ro.tensor_parallel > 1:
        options["tensor_parallel_size"] = ro.tensor_parallel
        options["distributed_executor_backend"] = "ray" if seat.tp_bundles else "mp"
    if seat.tp_bundles:
        env["VLLM_RAY_BUNDLE_INDICES"] = ",".join(map(str, seat.tp_bundles))
        env["VLLM_RAY_PER_WORKER_GPUS"] = f"{seat.tp_worker_gpus:g}"
    return options, env


def broadcast_ranks(shards: Sequence[int]) -> tuple[int, list[int]]:
    """World size and each engine's first group rank: the learner is rank 0, then every
    engine's tensor-parallel shards in turn (engine i's shard k is rank offset[i] + k)."""
    offsets, rank = [], 1
    for n in shards:
        offsets.append(rank)
        rank += n
    return rank, offsets


class RolloutPool(WorkerPool):
    kind = "rollout"

    def __init__(
        self,
        backend: Backend,
        recipe: Recipe,
        weights: str,
        bundles: Sequence[int | None],
        seats: Sequence[Seat] | None = None,
    ) -> None:
        ro = recipe.rollout
        self.recipe = recipe
        self.weights = weights  # the folder a (re)started engine loads first
        self.seats = list(
            seats or [Seat(b, ro.cpus_per_worker, ro.gpus_per_worker) for b in bundles]
        )
        self.learner: LearnerGroup | None = None
        self.weight_meta: list | None = None  # set while the broadcast group is whole
        self.group_address: tuple[str, int] | None = None
        self.sleep_level = sleep_level(recipe)
        self.asleep = False
        self.last_sync_s = 0.0  # the last `sync_weights`' wall time (wake-up included)
        self._sleep_warned = False
        super().__init__(backend, [s.bundle for s in self.seats])

    def spawn(self, index: int) -> Any:
        r, seat = self.recipe, self.seats[index]
        options, env = engine_options(r, seat)
        return self.backend.spawn(
            RolloutWorker,
            r.rollout.backend,
            self.weights,
            r.model.dtype,
            r.run.threads,
            options,
            env,
            num_cpus=seat.cpus,
            num_gpus=seat.gpus,
            bundle=seat.bundle,
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

    def sleep(self) -> None:
        """Free the engines' GPU memory for a learner step (`rollout.sleep_level` > 0); an engine
        that cannot sleep (vLLM on CPU) stays awake, with one warning naming why."""
        if not self.sleep_level:
            return
        reasons = [r for r in self.on_all(RolloutWorker.sleep, self.sleep_level) if r]
        self.asleep = True
        if reasons and not self._sleep_warned:
            log.warning(
                "rollout.sleep_level=%d: engines stay awake: %s", self.sleep_level, reasons[0]
            )
            self._sleep_warned = True

    def sync_weights(self, changed: bool = True) -> None:
        """Wake sleeping engines and give them the learner's weights when they `changed` (always
        after level 2, which dropped them): by broadcast while the group is whole, else the state
        dict through the object store (a future: learner -> object store -> engines)."""
        assert self.learner is not None, "follow(learner) first"
        start = time.perf_counter()
        level, self.asleep = (self.sleep_level if self.asleep else 0), False
        if level == 2:
            self.on_all(RolloutWorker.wake_up, ["weights"])
        elif level == 1:
            self.on_all(RolloutWorker.wake_up, None)
        if changed or level == 2:
            self._send_weights()
        if level == 2:
            self.on_all(RolloutWorker.wake_up, ["kv_cache"])
        self.last_sync_s = time.perf_counter() - start

    def _send_weights(self) -> None:
        live = self.learner.live_weights()
        if live is not None:  # one process: the learner's tensors straight into the engines
            self.on_all(RolloutWorker.copy_weights, live)
            return
        if self.weight_meta is not None:
            try:
                self._broadcast(self.weight_meta)
                return
            except _EngineDied as died:
                log.warning(
                    "a rollout engine died during the weight broadcast (%s); the group was "
                    "aborted and the engines now sync through the object store",
                    died.__cause__,
                )
                self.weight_meta = None
                self.replace_dead()
        state = self.learner.state_dict(self.recipe.model.dtype)  # as the engines hold it
        self.on_all(RolloutWorker.update_weights, state)

    def _broadcast(self, meta: list) -> None:
        """Learner rank 0 sends, every engine receives. On a failure the group is aborted and
        every call awaited; a dead engine becomes `_EngineDied`, other errors propagate."""
        futures = [
            *(self.backend.call(w, RolloutWorker.receive_weights, meta) for w in self.workers),
            self.learner.broadcast_weights(),
        ]
        try:
            self.backend.gather(futures)
            return
        except Exception as first:
            from omnisched.rollout import weight_sync

            assert self.group_address is not None
            weight_sync.abort(*self.group_address)  # the parties still waiting stop at once
            errors = [first]
            for future in futures:
                try:
                    self.backend.gather([future])
                except Exception as exc:
                    errors.append(exc)
            if self.backend.died(first, [self.learner.workers[0]]):
                raise  # the sender died: the learner's failure, not the pool's
            dead = next((e for e in errors if self.backend.died(e, self.workers)), None)
            if dead is None:
                raise
            raise _EngineDied() from dead

    def _join_broadcast(self, learner: LearnerGroup) -> list:
        """Learner rank 0 hosts the group on its node and every engine joins at once: the
        shards of engine i take ranks offset[i], offset[i] + 1, ... (`broadcast_ranks`)."""
        host, port = learner.weight_group_address()
        self.group_address = (host, port)
        shards = [self.recipe.rollout.tensor_parallel] * len(self.workers)
        world_size, offsets = broadcast_ranks(shards)
        meta = learner.join_weight_group(host, port, world_size)
        joins = [
            self.backend.call(w, RolloutWorker.join_weight_group, host, port, world_size, first)
            for w, first in zip(self.workers, offsets)
        ]
        return self.backend.gather([*joins, meta])[-1]


class _EngineDied(Exception):
    """An engine's process ended during a broadcast (the cause is the backend's error)."""
