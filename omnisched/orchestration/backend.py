"""Where workers live: Ray actors (local Ray or a cluster) or plain objects in the driver.

The controller only uses `spawn`, `call` and `gather`, so the same loop runs on either.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Protocol

from omnisched.config.schema import RayConfig


class Backend(Protocol):
    def spawn(
        self, cls: type, *args: Any, num_cpus: float = 1.0, num_gpus: float = 0.0, **kwargs: Any
    ) -> Any: ...

    def call(self, worker: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        """Start `worker.method(*args)`; returns a future for `gather`."""
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

    def kill(self, worker: Any) -> None: ...

    def shutdown(self) -> None: ...


class InlineBackend:
    """Every worker is a plain object in this process; calls run sequentially."""

    def spawn(
        self, cls: type, *args: Any, num_cpus: float = 1.0, num_gpus: float = 0.0, **kwargs: Any
    ) -> Any:
        return cls(*args, **kwargs)

    def call(self, worker: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(worker, method)(*args, **kwargs)

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

    def kill(self, worker: Any) -> None:
        return None

    def shutdown(self) -> None:
        return None


class RayBackend:
    """Workers are Ray actors; `ray.init` starts a local Ray unless `address` names a cluster."""

    def __init__(self, cfg: RayConfig) -> None:
        import ray

        self.ray = ray
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

    def spawn(
        self, cls: type, *args: Any, num_cpus: float = 1.0, num_gpus: float = 0.0, **kwargs: Any
    ) -> Any:
        # Ray hides every GPU (CUDA_VISIBLE_DEVICES="") from an actor that asked for none
        actor_cls = self.ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(cls)
        return actor_cls.remote(*args, **kwargs)

    def call(self, worker: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(worker, method).remote(*args, **kwargs)

    def gather(self, futures: list[Any]) -> list[Any]:
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

    def kill(self, worker: Any) -> None:
        with contextlib.suppress(Exception):
            self.ray.kill(worker, no_restart=True)

    def shutdown(self) -> None:
        if self._owns_ray:
            self.ray.shutdown()


def make_backend(cfg: RayConfig) -> Backend:
    return RayBackend(cfg) if cfg.enabled else InlineBackend()
