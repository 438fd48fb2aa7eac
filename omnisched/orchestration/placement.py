"""Placement: which actors a recipe starts, what each asks of Ray, and whether a cluster holds them.

`plan_placement` is pure: it reads a `Recipe` and returns the actor groups and the bundles of one
Ray placement group, so `omnisched run --dry-run` can show (and check) a cluster recipe's
footprint on a laptop. `check_fit` packs the bundles into a cluster's nodes.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from omnisched.config.schema import Recipe
from omnisched.orchestration.engine_plan import (  # noqa: F401 (rollout_pool imports two here)
    gpu_memory_utilization,
    overlap_problems,
    sleep_level,
)
from omnisched.orchestration.memory_plan import memory_plan, recipe_shape, render_plan

log = logging.getLogger(__name__)
REWARD_WORKER_CPUS = 0.5  # what the controller reserves per reward worker
LEARNER_GPU_SHARE = 0.5  # colocated: a learner rank's fraction of its bundle's one GPU
EPS = 1e-9


@dataclass(frozen=True)
class ActorGroup:
    """`count` actors of one kind; each uses `cpus` and `gpus` and lives in `bundles[i]`."""

    kind: str
    count: int
    cpus: float
    gpus: float
    bundles: list[list[int]] = field(default_factory=list)  # per actor: placement-group bundles
    shares_gpus: bool = False  # colocated: time-shares its GPUs with the other GPU group


@dataclass(frozen=True)
class PlacementPlan:
    groups: list[ActorGroup]
    bundles: list[dict[str, float]]
    strategy: str
    colocate: bool

    @property
    def totals(self) -> dict[str, float]:
        """Resources the placement group reserves: the sum of its bundles."""
        out: dict[str, float] = {"CPU": 0.0, "GPU": 0.0}
        for bundle in self.bundles:
            for key, amount in bundle.items():
                out[key] = out.get(key, 0.0) + amount
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "colocate": self.colocate,
            "actors": [asdict(g) for g in self.groups],
            "bundles": self.bundles,
            "totals": self.totals,
        }


def plan_placement(recipe: Recipe) -> PlacementPlan:
    """Resolve rollout, learner, reward and scheduler actors into one placement group's bundles."""
    ro, pl = recipe.rollout, recipe.placement
    bundles: list[dict[str, float]] = []
    learner = [
        [_new_bundle(bundles, pl.learner_cpus_per_worker, pl.learner_gpus_per_worker)]
        for _ in range(pl.learner_workers)
    ]
    if pl.colocate:  # engines live in the learner's bundles; their CPUs are spread over them
        rollout = _colocated_bundles(ro.num_workers, ro.gpus_per_worker, pl.learner_gpus_per_worker)
        for worker_bundles in rollout:
            for index in worker_bundles:
                bundles[index]["CPU"] += ro.cpus_per_worker / len(worker_bundles)
    else:
        rollout = [
            [_new_bundle(bundles, ro.cpus_per_worker, ro.gpus_per_worker)]
            for _ in range(ro.num_workers)
        ]
    reward = [
        [_new_bundle(bundles, REWARD_WORKER_CPUS, 0.0)] for _ in range(recipe.ray.reward_workers)
    ]
    groups = [
        ActorGroup(
            "rollout", ro.num_workers, ro.cpus_per_worker, ro.gpus_per_worker, rollout, pl.colocate
        ),
        ActorGroup(
            "learner",
            pl.learner_workers,
            pl.learner_cpus_per_worker,
            pl.learner_gpus_per_worker,
            learner,
            pl.colocate,
        ),
        ActorGroup("reward", recipe.ray.reward_workers, REWARD_WORKER_CPUS, 0.0, reward),
        ActorGroup("scheduler", 1, 0.0, 0.0, [[]]),  # bookkeeping only: reserves nothing
    ]
    return PlacementPlan(groups, bundles, pl.strategy, pl.colocate)


def _new_bundle(bundles: list[dict[str, float]], cpus: float, gpus: float) -> int:
    """Append a bundle (no GPU key when it needs none, as Ray expects); returns its index."""
    bundles.append({"CPU": cpus, "GPU": gpus} if gpus > 0 else {"CPU": cpus})
    return len(bundles) - 1


def _colocated_bundles(workers: int, gpus_per_worker: float, gpus_per_bundle: float) -> list:
    """Engine i covers GPUs [i*g, (i+1)*g) of the learner's flat GPU range; bundle j covers
    [j*b, (j+1)*b): engine i is placed in every bundle whose range overlaps its own."""
    out = []
    for i in range(workers):
        lo, hi = i * gpus_per_worker, (i + 1) * gpus_per_worker
        first = int(lo // gpus_per_bundle + EPS)
        last = int((hi - EPS) // gpus_per_bundle)
        out.append(list(range(first, last + 1)))
    return out


def unsupported_by_controller(recipe: Recipe) -> list[str]:
    """Placements `--dry-run` can plan but `omnisched run` cannot start, each naming the field.

    Learner ranks (`placement.learner_workers > 1`) are one Ray actor process each, so they need
    Ray; colocated GPUs are shared by fractions of one-GPU bundles (`seats`)."""
    pl, ro, problems = recipe.placement, recipe.rollout, []
    if pl.learner_workers > 1 and not recipe.ray.enabled:
        problems.append(
            f"placement.learner_workers={pl.learner_workers} needs ray.enabled: true (one process "
            "per learner rank); ray.enabled: false runs every worker in the driver's process"
        )
    if ro.weight_sync == "broadcast" and not recipe.ray.enabled:
        problems.append(
            "rollout.weight_sync: broadcast needs ray.enabled: true (the learner sends while the "
            "engines receive); ray.enabled: false runs every worker in turn in the driver's process"
        )
    gpus = (pl.learner_gpus_per_worker, ro.gpus_per_worker)
    if ro.weight_sync == "broadcast" and (gpus[0] > 0) != (gpus[1] > 0):
        problems.append(
            "rollout.weight_sync: broadcast needs the learner and the engines both on GPUs (NCCL) "
            f"or both on CPU (gloo); got placement.learner_gpus_per_worker={gpus[0]:g} and "
            f"rollout.gpus_per_worker={gpus[1]:g}"
        )
    if ro.tensor_parallel > 1 and ro.backend != "vllm":
        problems.append(
            f"rollout.tensor_parallel={ro.tensor_parallel} needs rollout.backend: vllm (the "
            f"{ro.backend} engine runs on one device)"
        )
    if pl.colocate:
        problems += _colocation_problems(recipe)
    return problems + overlap_problems(recipe)


def _colocation_problems(recipe: Recipe) -> list[str]:
    pl, ro, problems = recipe.placement, recipe.rollout, []
    if pl.learner_gpus_per_worker != 1:
        problems.append(
            "placement.colocate shares each learner rank's one-GPU bundle with the engines: set "
            f"placement.learner_gpus_per_worker: 1 (got {pl.learner_gpus_per_worker:g})"
        )
    g = ro.gpus_per_worker
    if not (g == ro.tensor_parallel or (g < 1 and abs(1 / g - round(1 / g)) < EPS)):
        problems.append(
            f"placement.colocate: rollout.gpus_per_worker={g:g} must be rollout.tensor_parallel "
            "(whole GPUs) or 1/k of one GPU (k engines per GPU)"
        )
    if ro.weight_sync == "broadcast":
        problems.append(
            "rollout.weight_sync: broadcast with placement.colocate: NCCL cannot hold two ranks "
            "on one GPU; colocated engines take rollout.weight_sync: object_store"
        )
    return problems


@dataclass(frozen=True)
class Seat:
    """Where one actor sits and what it asks Ray for. A colocated tensor-parallel vLLM engine
    asks for no GPU itself: vLLM's Ray executor starts one worker in each of `tp_bundles`, each
    asking `tp_worker_gpus` of that bundle's GPU (VLLM_RAY_BUNDLE_INDICES / _PER_WORKER_GPUS)."""

    bundle: int | None
    cpus: float
    gpus: float
    tp_bundles: tuple[int, ...] = ()
    tp_worker_gpus: float = 0.0


def seats(recipe: Recipe, plan: PlacementPlan) -> dict[str, list[Seat]]:
    """Each actor's seat, by kind. Colocated GPUs are shared by fractions of one bundle's GPU, so
    that Ray puts the sharers on one device: the learner rank asks LEARNER_GPU_SHARE, and the
    rest is split between the engines there (k engines of 1/k GPU: each (1 - share) / k; an
    engine of whole GPUs: (1 - share) on each GPU it spans, through its TP workers)."""
    ro, pl = recipe.rollout, recipe.placement
    groups = {g.kind: g for g in plan.groups}
    out = {
        kind: [Seat(b[0] if b else None, g.cpus, g.gpus) for b in g.bundles]
        for kind, g in groups.items()
    }
    if not (pl.colocate and ro.gpus_per_worker > 0):
        return out
    rest = 1.0 - LEARNER_GPU_SHARE
    out["learner"] = [Seat(s.bundle, s.cpus, LEARNER_GPU_SHARE) for s in out["learner"]]
    rollout = []
    for spans in groups["rollout"].bundles:
        cpus = ro.cpus_per_worker / len(spans)  # what plan_placement added to each bundle
        if ro.tensor_parallel > 1 and recipe.ray.enabled:
            rollout.append(Seat(spans[0], cpus, 0.0, tuple(spans), rest))
        elif ro.tensor_parallel > 1:  # in the driver's process: vLLM's own shard processes
            rollout.append(Seat(None, cpus, float(ro.tensor_parallel)))
        else:
            rollout.append(Seat(spans[0], cpus, rest * ro.gpus_per_worker))
    out["rollout"] = rollout
    return out


def cluster_of(recipe: Recipe) -> list[dict[str, float]] | None:
    """The target cluster a recipe describes (`placement.nodes`), as one resource dict per node."""
    pl = recipe.placement
    if pl.nodes is None:
        return None
    node: dict[str, float] = {"GPU": float(pl.gpus_per_node)}
    node["CPU"] = float(pl.cpus_per_node) if pl.cpus_per_node is not None else float("inf")
    return [dict(node) for _ in range(pl.nodes)]


def check_fit(plan: PlacementPlan, cluster: dict[str, float] | list[dict[str, float]]) -> list[str]:
    """Problems placing the plan's bundles on `cluster`; empty when it fits.

    `cluster` is either `ray.cluster_resources()` (totals only: each resource is compared with
    the plan's totals) or one dict per node (`ray.nodes()[i]["Resources"]`, or `cluster_of`):
    bundles are then packed first-fit-decreasing, honouring STRICT_PACK / STRICT_SPREAD.
    """
    if isinstance(cluster, dict):
        return [
            f"needs {need:g} {res} in all, the cluster has {cluster.get(res, 0.0):g}"
            for res, need in plan.totals.items()
            if need > cluster.get(res, 0.0) + EPS
        ]
    if plan.strategy == "STRICT_PACK":
        return [f"STRICT_PACK: {p} on any single node" for p in _single_node(plan, cluster)]
    if plan.strategy == "STRICT_SPREAD" and len(plan.bundles) > len(cluster):
        return [
            f"STRICT_SPREAD needs one node per bundle: {len(plan.bundles)} bundles, "
            f"{len(cluster)} nodes"
        ]
    return _pack(plan, cluster)


def _single_node(plan: PlacementPlan, cluster: list[dict[str, float]]) -> list[str]:
    best = max(cluster, key=lambda n: n.get("GPU", 0.0), default={})
    return check_fit(plan, best)


def _pack(plan: PlacementPlan, cluster: list[dict[str, float]]) -> list[str]:
    free = [dict(node) for node in cluster]
    spread = plan.strategy == "STRICT_SPREAD"
    used: set[int] = set()
    order = sorted(
        range(len(plan.bundles)),
        key=lambda i: (-plan.bundles[i].get("GPU", 0.0), -plan.bundles[i].get("CPU", 0.0)),
    )
    unplaced = []
    for i in order:
        bundle = plan.bundles[i]
        node = next(
            (
                n
                for n, res in enumerate(free)
                if not (spread and n in used)
                and all(res.get(k, 0.0) + EPS >= v for k, v in bundle.items())
            ),
            None,
        )
        if node is None:
            unplaced.append(i)
            continue
        used.add(node)
        for k, v in bundle.items():
            free[node][k] = free[node].get(k, 0.0) - v
    if not unplaced:
        return []
    first = ", ".join(f"{v:g} {k}" for k, v in plan.bundles[unplaced[0]].items())
    return [
        f"{len(unplaced)} of {len(plan.bundles)} bundles fit on no node with room left "
        f"(bundles {sorted(unplaced)}; bundle {unplaced[0]} needs {first}; "
        f"{len(cluster)} node(s))"
    ]


def render(plan: PlacementPlan) -> str:
    """A short human-readable table of the plan (the dry run prints the YAML form as well)."""
    lines = [f"placement group: {len(plan.bundles)} bundles, strategy {plan.strategy}"]
    for g in plan.groups:
        shared = " (shares GPUs)" if g.shares_gpus else ""
        lines.append(f"  {g.kind:<9} x{g.count}: {g.cpus:g} CPU, {g.gpus:g} GPU each{shared}")
    totals = plan.totals
    lines.append(f"  total: {totals['CPU']:g} CPU, {totals['GPU']:g} GPU")
    return "\n".join(lines)


def placement_report(recipe: Recipe) -> tuple[str, list[str]]:
    """What `omnisched run --dry-run` prints after the config: a second YAML document holding
    the plan (headed by `render` as comments) and, when the recipe describes its cluster
    (`placement.nodes`), whether it fits; also the problems, so the caller can fail on them."""
    plan = plan_placement(recipe)
    cluster = cluster_of(recipe)
    problems = check_fit(plan, cluster) if cluster is not None else []
    doc: dict[str, Any] = {"placement_plan": plan.to_dict()}
    memory = memory_plan(recipe)
    doc["memory_plan"] = memory.to_dict() if memory else None
    memory_lines = render_plan(memory, recipe_shape(recipe)[1])
    if memory is not None and memory.fits is False:
        log.warning("%s (an estimate: see the memory plan)", memory_lines[0])
    if cluster is not None:
        pl = recipe.placement
        doc["target_cluster"] = {
            "nodes": pl.nodes,
            "gpus_per_node": pl.gpus_per_node,
            "cpus_per_node": pl.cpus_per_node,
            "fits": not problems,
            "problems": problems,
        }
    lines = [*render(plan).splitlines(), *memory_lines]
    comments = "".join(f"# {line}\n" for line in lines)
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)
    return "---\n" + comments + body, problems
