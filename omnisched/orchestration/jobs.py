"""Launch a recipe onto an existing Ray cluster through the Ray Jobs API, and follow it there.

The recipe is validated here first. The cluster then runs `python -m omnisched.cli run RECIPE
OVERRIDES --quiet` inside an upload of this project (the job's working dir), so the code that
trains is the code that validated the recipe, not whatever version the cluster image holds.
What the cluster's Python lacks of the job's light dependencies is installed for the job
(`ship_requirements`, `job_env`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import os
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from omnisched.config import load_recipe
from omnisched.errors import ConfigError, OmniError
from omnisched.orchestration.job_env import (
    PROBE,
    PROBE_ENV,
    job_requirements,
    parse_probe,
    split_missing,
)

# Never uploaded with the working dir (Ray also honours .gitignore and .rayignore).
DEFAULT_EXCLUDES = [
    ".git",
    ".venv",
    "venv",
    "runs",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
    "build",
    "dist",
    ".whl",
    ".device",
]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
RECIPE_ENV = "OMNISCHED_RECIPE_YAML"  # carries a recipe that lives outside the working dir
RECIPE_ON_CLUSTER = ".omnisched-launch.yaml"
_ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
AUTH_HINT = (
    "the cluster wants a Ray auth token: set RAY_AUTH_MODE=token, with the token in "
    "$RAY_AUTH_TOKEN or ~/.ray/auth_token"
)


class ClusterError(OmniError):
    """The Ray cluster cannot be reached, or its Jobs API refused a request."""


@dataclass(frozen=True)
class JobSpec:
    """Everything `JobSubmissionClient.submit_job` needs."""

    entrypoint: str
    runtime_env: dict[str, Any] = field(default_factory=dict)
    submission_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    requirements: list[str] = field(default_factory=list)  # `job_env.job_requirements`


def project_root() -> Path:
    """The directory holding this package's source: the default working dir of a launched job."""
    return Path(__file__).resolve().parents[2]


def build_job(
    recipe: str | Path,
    overrides: Sequence[str] = (),
    *,
    working_dir: str | Path | None = None,
    env_vars: dict[str, str] | None = None,
    pip: Sequence[str] = (),
    excludes: Sequence[str] = DEFAULT_EXCLUDES,
    submission_id: str | None = None,
    dry_run: bool = False,
) -> JobSpec:
    """Validate `recipe` + `overrides` locally and describe the job that runs it on a cluster."""
    cfg = load_recipe(recipe, list(overrides))
    if not cfg.ray.enabled:
        raise ConfigError(
            "launch: ray.enabled: false would run every worker inside the job's driver, not on "
            "the cluster; remove it (or use `omnisched run` on one machine)"
        )
    root = Path(working_dir or project_root()).resolve()
    if not root.is_dir():
        raise ConfigError(f"--working-dir {root}: not a directory")
    args = list(overrides)
    if cfg.ray.address is None:
        args.append("ray.address=auto")  # inside a job RAY_ADDRESS names the cluster: join it
    env = {"PYTHONUNBUFFERED": "1", **(env_vars or {})}
    setup = ""
    recipe_arg = _uploaded_path(Path(recipe), root, excludes)
    if recipe_arg is None:  # not in the upload: send the validated recipe itself
        env[RECIPE_ENV] = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        args = args[len(overrides) :]  # already applied in the dumped recipe
        recipe_arg = RECIPE_ON_CLUSTER
        write = (
            f"import os, pathlib; "
            f"pathlib.Path({RECIPE_ON_CLUSTER!r}).write_text(os.environ[{RECIPE_ENV!r}])"
        )
        setup = f"python -c {shlex.quote(write)} && "
    flags = ["--quiet", *(["--dry-run"] if dry_run else [])]
    command = ["python", "-m", "omnisched.cli", "run", recipe_arg, *args, *flags]
    runtime_env: dict[str, Any] = {
        "working_dir": str(root),
        "excludes": list(excludes),
        "env_vars": env,
    }
    if pip:
        runtime_env["pip"] = pip_requirements(pip)
    return JobSpec(
        entrypoint=setup + shlex.join(command),
        runtime_env=runtime_env,
        submission_id=submission_id,
        metadata={"omnisched_recipe": Path(recipe).name, "omnisched_run": cfg.run.name},
        requirements=job_requirements(cfg),
    )


def ship_requirements(client: Any, spec: JobSpec, timeout_s: float = 120.0) -> JobSpec:
    """`spec` with the requirements the cluster's Python lacks added to its runtime_env `pip`
    (a probe job asks); a ClusterError naming them when they are heavy (`CLUSTER_PROVIDED`)."""
    env = {PROBE_ENV: json.dumps(spec.requirements)}
    probe = JobSpec(entrypoint=shlex.join(["python", "-c", PROBE]), runtime_env={"env_vars": env})
    job_id = submit(client, probe)
    status = wait(client, job_id, timeout_s=timeout_s, poll_s=0.3)
    try:
        missing, python = parse_probe(job_logs(client, job_id))
    except ValueError:
        raise ClusterError(f"the dependency probe job {job_id} ended {status}") from None
    heavy, light = split_missing(missing)
    if heavy:
        raise ClusterError(
            f"the cluster's Python {python} lacks {', '.join(heavy)}: start the cluster from an "
            "image that has them (docker/Dockerfile.gpu) or install them there"
        )
    if not light:
        return spec
    runtime_env = dict(spec.runtime_env)
    runtime_env["pip"] = [*runtime_env.get("pip", []), *light]
    return replace(spec, runtime_env=runtime_env)


def _uploaded_path(recipe: Path, root: Path, excludes: Sequence[str]) -> str | None:
    """`recipe` relative to the working dir, or None when the upload will not contain it."""
    try:
        rel = recipe.resolve().relative_to(root)
    except ValueError:
        return None
    if any(fnmatch.fnmatch(part, pattern) for part in rel.parts for pattern in excludes):
        return None  # e.g. runs/NAME/recipe.yaml: runs/ is never uploaded
    return rel.as_posix()


def pip_requirements(items: Sequence[str]) -> list[str]:
    """Requirement specs; an item naming an existing file is read as a requirements.txt."""
    out: list[str] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_file():
            lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
            out.extend(line for line in lines if line)
        else:
            out.append(item)
    return out


def parse_env(items: Sequence[str]) -> dict[str, str]:
    """`KEY=VALUE` strings (from `--env`) as a dict."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env '{item}' must look like KEY=VALUE")
        env[key] = value
    return env


@contextlib.contextmanager
def _explicit_address() -> Iterator[None]:
    """Ray lets RAY_ADDRESS override an explicit address; here the explicit one wins."""
    saved = {k: os.environ.pop(k) for k in _ADDRESS_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: str | None) -> Any:
    """A `JobSubmissionClient` for `address` (dashboard URL, e.g. http://HEAD:8265), else for
    $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS; a ClusterError when nothing answers there."""
    address = address or next((os.environ[k] for k in _ADDRESS_ENV if os.environ.get(k)), None)
    if not address:
        raise ClusterError("no cluster address: give --address http://HEAD:8265 or set RAY_ADDRESS")
    from ray.job_submission import JobSubmissionClient

    try:
        with _explicit_address():
            return JobSubmissionClient(address)
    except Exception as exc:  # requests/aiohttp/Ray raise many types for "nobody answers"
        if type(exc).__name__ == "AuthenticationError":
            raise ClusterError(f"{address}: {AUTH_HINT} ({_one_line(exc)})") from None
        raise ClusterError(
            f"cannot reach the Ray Jobs API at {address}: {_one_line(exc)}"
        ) from None


def _call(client: Any, job_id: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # Ray turns HTTP errors into RuntimeError; transport errors vary
        text = _one_line(exc)
        where = getattr(client, "get_address", lambda: "the cluster")()
        if "404" in text or "does not exist" in text:
            raise ClusterError(f"no job '{job_id}' on {where}") from None
        if type(exc).__name__ == "AuthenticationError":
            raise ClusterError(f"{where}: {AUTH_HINT} ({text})") from None
        raise ClusterError(f"job '{job_id}' on {where}: {text}") from None


def submit(client: Any, spec: JobSpec) -> str:
    """Submit the job (uploading its working dir); returns its submission id."""
    return _call(
        client,
        spec.submission_id or "(new)",
        client.submit_job,
        entrypoint=spec.entrypoint,
        runtime_env=spec.runtime_env,
        submission_id=spec.submission_id,
        metadata=spec.metadata or None,
    )


def job_info(client: Any, job_id: str) -> dict[str, Any]:
    """Status, message, entrypoint and times (unix seconds) of one job."""
    info = _call(client, job_id, client.get_job_info, job_id)
    times = {k: getattr(info, k) for k in ("start_time", "end_time")}  # unix milliseconds
    seconds = {k: v / 1000 if v else None for k, v in times.items()}
    return {
        "job_id": job_id,
        "status": str(getattr(info.status, "value", info.status)),
        "message": info.message or "",
        "entrypoint": info.entrypoint,
        **seconds,
    }


def job_status(client: Any, job_id: str) -> str:
    return job_info(client, job_id)["status"]


def job_logs(client: Any, job_id: str) -> str:
    return _call(client, job_id, client.get_job_logs, job_id)


def stop(client: Any, job_id: str) -> bool:
    """Ask the job to stop; False when it had already ended."""
    return bool(_call(client, job_id, client.stop_job, job_id))


def wait(client: Any, job_id: str, timeout_s: float = 600.0, poll_s: float = 0.5) -> str:
    """Poll until the job ends; its final status. A ClusterError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while (status := job_status(client, job_id)) not in TERMINAL:
        if time.monotonic() > deadline:
            raise ClusterError(f"job '{job_id}' still {status} after {timeout_s:g} s")
        time.sleep(poll_s)
    return status


def follow(client: Any, job_id: str, write: Callable[[str], None]) -> str:
    """Stream the job's logs to `write` until it ends; its final status."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    job_status(client, job_id)  # an unknown id fails here with a clear message
    _call(client, job_id, asyncio.run, tail())
    return wait(client, job_id, timeout_s=60.0)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
