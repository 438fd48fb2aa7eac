"""What a launched job needs from the cluster's Python, and what `launch` ships for it.

The cluster provides the heavy runtime (`CLUSTER_PROVIDED`: torch, Ray, DeepSpeed, transformers,
TRL, accelerate, datasets, and vLLM for `rollout.backend: vllm`), built for its accelerators:
docker/Dockerfile.gpu is such an image. The project's other dependencies (typer, pydantic, rich,
...) and the distributions of the recipe's plugins (entry points) are light: `launch` asks the
cluster which of them its Python lacks (`PROBE`, a job of its own that imports nothing of ours)
and lists exactly those as the job's runtime_env `pip`, which Ray installs into a virtualenv on
top of the cluster's Python (from the package index the cluster's pip is configured for). A
cluster that lacks none gets no pip environment; one that lacks heavy packages is refused.
"""

from __future__ import annotations

import importlib.metadata
import json
import re

from omnisched.config.schema import Recipe

CLUSTER_PROVIDED = frozenset(
    {"torch", "ray", "deepspeed", "transformers", "trl", "accelerate", "datasets", "vllm"}
)
PROBE_ENV = "OMNISCHED_PROBE"
PROBE_MARK = "OMNISCHED_PROBE_RESULT "
# Runs on the cluster's Python: which requirements (JSON list in $OMNISCHED_PROBE) it lacks.
# Bare names are checked for presence; specs with versions against `packaging` when it exists.
PROBE = """
import importlib.metadata as md, json, os, re, sys
try:
    from packaging.requirements import Requirement
except ImportError:
    Requirement = None
missing = []
for spec in json.loads(os.environ["OMNISCHED_PROBE"]):
    name = Requirement(spec).name if Requirement else re.split(r"[<>=!~ \\[;]", spec)[0]
    try:
        version = md.version(name)
    except md.PackageNotFoundError:
        missing.append(spec)
        continue
    if Requirement and not Requirement(spec).specifier.contains(version, prereleases=True):
        missing.append(spec)
result = {"missing": missing, "python": sys.version.split()[0]}
print("OMNISCHED_PROBE_RESULT " + json.dumps(result))
"""


def requirement_name(spec: str) -> str:
    """`ray[default]>=2.60` -> `ray` (normalised as pip compares names)."""
    name = re.split(r"[<>=!~ \[;]", spec.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def job_requirements(recipe: Recipe) -> list[str]:
    """What the job imports: the heavy packages by name (presence is checked, not versions: the
    cluster's builds are its own), the light ones with the project's version bounds, and the
    recipe's plugin distributions at the versions installed here."""
    declared = importlib.metadata.requires("omnisched") or []
    out: list[str] = []
    for spec in declared:
        if ";" in spec:  # extras (test, vllm) and platform markers: not the runtime's
            continue
        name = requirement_name(spec)
        out.append(name if name in CLUSTER_PROVIDED else spec)
    if recipe.rollout.backend == "vllm":
        out.append("vllm")
    return out + plugin_distributions(recipe)


def plugin_distributions(recipe: Recipe) -> list[str]:
    """`name==version` of each installed distribution whose entry point provides a plugin the
    recipe names (built-in plugins come with the project itself)."""
    wanted = {
        "omnisched.rollout_engines": {recipe.rollout.backend},
        "omnisched.learners": {recipe.learner.backend},
        "omnisched.policies": {recipe.schedule.policy},
        "omnisched.domains": {d.type for d in recipe.domains},
        "omnisched.verifiers": set(),
        "omnisched.judges": set(),
    }
    for dom in recipe.domains:
        for comp in dom.reward or []:
            if comp.verifier:
                wanted["omnisched.verifiers"].add(comp.verifier)
            else:
                wanted["omnisched.judges"].add(comp.judge)
    found = set()
    for group, names in wanted.items():
        for ep in importlib.metadata.entry_points(group=group):
            if ep.name in names and ep.dist is not None and ep.dist.name != "omnisched":
                found.add(f"{ep.dist.name}=={ep.dist.version}")
    return sorted(found)


def parse_probe(logs: str) -> tuple[list[str], str]:
    """(missing requirement specs, the cluster's Python version) from the probe job's logs."""
    for line in reversed(logs.splitlines()):
        if line.startswith(PROBE_MARK):
            result = json.loads(line[len(PROBE_MARK) :])
            return list(result["missing"]), str(result["python"])
    raise ValueError("the probe job printed no result")


def split_missing(missing: list[str]) -> tuple[list[str], list[str]]:
    """(heavy packages the cluster must provide, light requirements pip can add)."""
    heavy = [m for m in missing if requirement_name(m) in CLUSTER_PROVIDED]
    return heavy, [m for m in missing if m not in heavy]
