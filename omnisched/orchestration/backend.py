"""Where workers live: Ray actors (local Ray or a cluster) or plain objects in the driver.

The controller only uses `reserve`, `spawn`, `call` and `gather`, so the same loop runs on either.
`call` takes the worker class's method itself (`backend.call(w, RolloutWorker.generate, ...)`),
never its name as a string: a reader or an IDE follows it to the code it runs.
Under Ray, `reserve` creates one placement group from the recipe's plan (all of its bundles or
none: a learner world never starts half of its ranks) and `spawn(..., bundle=i)` puts an actor in
bundle i; a replacement for a dead actor goes back into the bundle its predecessor released.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any, Protocol

from omnisched.config.schema import RayConfig
from omnisched.errors import OmniError

RESERVE_TIMEOUT_S = 120.0  # how long Ray may take to find the placement group's resources


class Backend(Protocol):
    def reserve(
        self, bundles: list[dict[str, float]], strategy: str, timeout_s: float = RESERVE_TIMEOUT_S
    ) -> None:
        """Hold `bundles` (one per actor, `placement.plan_placement`) for the run, all or none;
        raises `OmniError` naming what is missing when they cannot be held in `timeout_s`."""
        ...

    def spawn(
        self,
        cls: type,
        *args: Any,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        bundle: int | None = None,
        **kwargs: Any,
    ) -> Any: ...

    def call(self, worker: Any, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Start `method` (a method of the worker's class) on `worker`; a future for `gather`."""
        ...

    def gather(self, futures: list[Any]) -> list[Any]: ...

    def submit(self, fn: Any, *args: Any, num_cpus: float = 1.0) -> Any:
        """Run `fn(*args)` as a one-off task in its own process where the backend has processes
        (its memory returns to the OS when it ends); returns a future for `gather`/`done`."""
        ...

    def done(self, future: Any, timeout: float) -> bool:
        """Wait up to `timeout` seconds; whether `future` has finished."""
        ...

    def put(self, obj: Any) -> Any: ...

    def is_worker_failure(self, exc: BaseException) -> bool:
        """Whether `exc` means a worker process died (restart it) rather than a bug (re-raise)."""
        ...

    def alive(self, worker: Any) -> bool: ...

    def died(self, exc: BaseException, workers: list[Any]) -> bool:
        """Whether `exc` says that one of `workers` died (its process ended)."""
        ...

    def kill(self, worker: Any) -> None: ...

    def shutdown(self) -> None: ...


class InlineBackend:
    """Every worker is a plain object in this process; calls run sequentially."""

    def reserve(
        self, bundles: list[dict[str, float]], strategy: str, timeout_s: float = RESERVE_TIMEOUT_S
    ) -> None:
        return None  # nothing to hold: the workers share the driver's process

    def spawn(
        self,
        cls: type,
        *args: Any,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        bundle: int | None = None,
        **kwargs: Any,
    ) -> Any:
        return cls(*args, **kwargs)

    def call(self, worker: Any, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return getattr(worker, method_name(method))(*args, **kwargs)

    def gather(self, futures: list[Any]) -> list[Any]:
        return futures

    def submit(self, fn: Any, *args: Any, num_cpus: float = 1.0) -> Any:
        return fn(*args)

    def done(self, future: Any, timeout: float) -> bool:
        return True

    def put(self, obj: Any) -> Any:
        return obj

    def is_worker_failure(self, exc: BaseException) -> bool:
        return False  # inline workers share the driver's process: nothing to restart

    def alive(self, worker: Any) -> bool:
        return True

    def died(self, exc: BaseException, workers: list[Any]) -> bool:
        return False

    def kill(self, worker: Any) -> None:
        return None

    def shutdown(self) -> None:
        return None


class RayBackend:
    """Workers are Ray actors; `ray.init` starts a local Ray unless `address` names a cluster."""

    def __init__(self, cfg: RayConfig) -> None:
        import ray

        self.ray = ray
        self.pg: Any = None
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
            if cfg.address:
                kwargs["address"] = cfg.address
            else:
                kwargs["num_cpus"] = cfg.num_cpus or max(4, os.cpu_count() or 1)
                # fewer malloc arenas: multi-threaded torch workers otherwise hold freed memory
                kwargs["runtime_env"] = {"env_vars": {"MALLOC_ARENA_MAX": "2"}}
            os.environ.setdefault("RAY_DEDUP_LOGS", "1")
            ray.init(**kwargs)

    def reserve(
        self, bundles: list[dict[str, float]], strategy: str, timeout_s: float = RESERVE_TIMEOUT_S
    ) -> None:
        from ray.util.placement_group import placement_group

        from omnisched.orchestration.placement import PlacementPlan, check_fit

        self.release()
        pg = placement_group(bundles, strategy=strategy)
        ready, _ = self.ray.wait([pg.ready()], timeout=timeout_s)
        if not ready:
            self.ray.util.remove_placement_group(pg)
            plan = PlacementPlan(groups=[], bundles=bundles, strategy=strategy, colocate=False)
            nodes = [n["Resources"] for n in self.ray.nodes() if n.get("Alive")]
            missing = "; ".join(check_fit(plan, nodes)) or "other work holds what it needs"
            totals = ", ".join(f"{v:g} {k}" for k, v in plan.totals.items() if v)
            raise OmniError(
                f"placement: Ray could not reserve {len(bundles)} bundles ({totals}, {strategy}) "
                f"in {timeout_s:g} s: {missing}"
                " (see placement.*, rollout.*_per_worker, ray.reward_workers; ray.num_cpus sizes "
                "a local Ray)"
            )
        self.pg = pg

    def spawn(
        self,
        cls: type,
        *args: Any,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        bundle: int | None = None,
        **kwargs: Any,
    ) -> Any:
        # Ray hides every GPU (CUDA_VISIBLE_DEVICES="") from an actor that asked for none
        options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus}
        if bundle is not None and self.pg is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                self.pg, placement_group_bundle_index=bundle
            )
        return self.ray.remote(**options)(cls).remote(*args, **kwargs)

    def release(self) -> None:
        """Give the placement group's resources back (a cluster keeps them otherwise)."""
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.ray.util.remove_placement_group(self.pg)
            self.pg = None

    def call(self, worker: Any, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return getattr(worker, method_name(method)).remote(*args, **kwargs)

    def gather(self, futures: list[Any]) -> list[Any]:
        """Every result, in order; the first failure is raised as soon as it happens, not once
        all have finished: a dead actor's call fails at once, while its peers may wait for it
        in a collective (a learner world, a weight broadcast) until their group times out."""
        pending = list(dict.fromkeys(futures))
        while pending:
            ready, pending = self.ray.wait(pending, num_returns=1)
            self.ray.get(ready)
        return self.ray.get(futures)

    def submit(self, fn: Any, *args: Any, num_cpus: float = 1.0) -> Any:
        # max_calls=1: the worker process exits after the task instead of idling with its heap
        return self.ray.remote(num_cpus=num_cpus, max_calls=1)(fn).remote(*args)

    def done(self, future: Any, timeout: float) -> bool:
        ready, _ = self.ray.wait([future], timeout=timeout)
        return bool(ready)

    def put(self, obj: Any) -> Any:
        return self.ray.put(obj)

    def is_worker_failure(self, exc: BaseException) -> bool:
        from ray.exceptions import RayActorError, WorkerCrashedError

        return isinstance(exc, RayActorError | WorkerCrashedError)

    def alive(self, worker: Any) -> bool:
        try:
            self.ray.get(worker.__ray_ready__.remote(), timeout=30)
            return True
        except Exception:  # dead, restarting or unreachable: replace it
            return False

    def died(self, exc: BaseException, workers: list[Any]) -> bool:
        from ray.exceptions import RayActorError

        ids = {w._actor_id.hex() for w in workers}
        return isinstance(exc, RayActorError) and exc.actor_id in ids

    def kill(self, worker: Any) -> None:
        with contextlib.suppress(Exception):
            self.ray.kill(worker, no_restart=True)

    def shutdown(self) -> None:
        self.release()
        if self._owns_ray:
            self.ray.shutdown()


def make_backend(cfg: RayConfig) -> Backend:
    return RayBackend(cfg) if cfg.enabled else InlineBackend()


def method_name(method: Callable[..., Any]) -> str:
    """The attribute a worker method is called by (`RolloutWorker.generate` -> "generate")."""
    name = getattr(method, "__name__", None)
    if isinstance(method, str) or not callable(method) or not name:
        raise TypeError(f"backend.call takes a worker class's method, not {method!r}")
    return name


def ask(backend: Backend, worker: Any, method: Callable[..., Any], *args: Any) -> Any:
    """`method` on `worker`, waited for: its result."""
    return backend.gather([backend.call(worker, method, *args)])[0]
