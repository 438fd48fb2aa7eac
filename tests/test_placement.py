"""Placement: hand-worked plans for separate and colocated GPUs, fit checks, and the dry run."""

import re

import pytest
import yaml
from conftest import PAPER_RECIPE as PAPER
from conftest import TINY_RECIPE as TINY
from typer.testing import CliRunner

from omnisched.cli import app
from omnisched.config import load_recipe
from omnisched.config.schema import Recipe
from omnisched.errors import ConfigError, OmniError
from omnisched.orchestration.backend import InlineBackend
from omnisched.orchestration.controller import Controller
from omnisched.orchestration.placement import (
    Seat,
    check_fit,
    cluster_of,
    placement_report,
    plan_placement,
    seats,
    unsupported_by_controller,
)
from omnisched.orchestration.rollout_pool import engine_options


def _recipe(**sections) -> Recipe:
    base = {"domains": [{"name": "m", "type": "math"}], "learner": {"backend": "deepspeed"}}
    return Recipe.model_validate({**base, **sections})


def test_separate_gpus_one_bundle_per_actor():
    r = _recipe(
        rollout={"num_workers": 2, "cpus_per_worker": 2, "gpus_per_worker": 1},
        placement={"learner_workers": 2, "learner_gpus_per_worker": 1},
        ray={"reward_workers": 1},
    )
    plan = plan_placement(r)
    assert plan.bundles == [
        {"CPU": 1.0, "GPU": 1.0},  # learner ranks first
        {"CPU": 1.0, "GPU": 1.0},
        {"CPU": 2.0, "GPU": 1.0},  # rollout engines
        {"CPU": 2.0, "GPU": 1.0},
        {"CPU": 0.5},  # reward worker: no GPU key
    ]
    assert plan.totals == {"CPU": 2 * 2 + 2 * 1 + 0.5, "GPU": 4.0}
    groups = {g.kind: g for g in plan.groups}
    assert groups["rollout"].bundles == [[2], [3]]
    assert groups["learner"].bundles == [[0], [1]]
    assert groups["scheduler"].bundles == [[]]


def test_colocated_engines_share_the_learner_bundles():
    r = _recipe(
        rollout={
            "num_workers": 2,
            "cpus_per_worker": 2,
            "gpus_per_worker": 2,
            "tensor_parallel": 2,
        },
        placement={"learner_workers": 4, "learner_gpus_per_worker": 1, "colocate": True},
        ray={"reward_workers": 1},
    )
    plan = plan_placement(r)
    # 4 GPU bundles, each 1 learner CPU + half of one engine's 2 CPUs; then the reward worker
    assert plan.bundles == [{"CPU": 2.0, "GPU": 1.0}] * 4 + [{"CPU": 0.5}]
    assert plan.totals["GPU"] == 4.0  # shared, not 2*2 + 4*1
    rollout = next(g for g in plan.groups if g.kind == "rollout")
    assert rollout.bundles == [[0, 1], [2, 3]]
    assert rollout.shares_gpus


def test_fractional_colocated_engines_pack_two_per_gpu():
    r = _recipe(
        rollout={"num_workers": 4, "gpus_per_worker": 0.5},
        placement={"learner_workers": 2, "learner_gpus_per_worker": 1, "colocate": True},
    )
    rollout = next(g for g in plan_placement(r).groups if g.kind == "rollout")
    assert rollout.bundles == [[0], [0], [1], [1]]


@pytest.mark.parametrize(
    ("sections", "needle"),
    [
        (
            {"rollout": {"gpus_per_worker": 1}, "placement": {"colocate": True}},
            "placement.colocate needs the same non-zero GPU count",
        ),
        ({"placement": {"colocate": True}}, "placement.colocate"),  # no GPUs at all
        ({"rollout": {"tensor_parallel": 2, "gpus_per_worker": 1}}, "rollout.tensor_parallel=2"),
        ({"placement": {"strategy": "SPREAD_THIN"}}, "placement.strategy"),
        ({"placement": {"learner_gpu": 1}}, "placement.learner_gpu: unknown field"),
    ],
)
def test_bad_placement_names_the_field(tmp_path, sections, needle):
    data = yaml.safe_load(TINY.read_text())
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_recipe(path)


def test_check_fit_against_cluster_resources_totals():
    plan = plan_placement(
        _recipe(rollout={"gpus_per_worker": 1}, placement={"learner_gpus_per_worker": 1})
    )
    assert check_fit(plan, {"CPU": 8.0, "GPU": 2.0, "memory": 1e9}) == []
    problems = check_fit(plan, {"CPU": 8.0, "GPU": 1.0})
    assert problems == ["needs 2 GPU in all, the cluster has 1"]


def test_check_fit_packs_bundles_per_node():
    r = _recipe(
        rollout={"num_workers": 8, "gpus_per_worker": 2, "tensor_parallel": 2},
        placement={"learner_workers": 16, "learner_gpus_per_worker": 1, "colocate": True},
    )
    assert check_fit(plan_placement(r), [{"CPU": 64.0, "GPU": 8.0}] * 2) == []
    # 3 engines x tensor parallel 4 = 12 GPUs = the cluster's total, but a bundle cannot span
    # nodes: each 6-GPU node holds one 4-GPU engine, so the third has nowhere to go
    tp4 = _recipe(rollout={"num_workers": 3, "gpus_per_worker": 4, "tensor_parallel": 4})
    nodes = [{"CPU": 64.0, "GPU": 6.0}] * 2
    assert check_fit(plan_placement(tp4), {"CPU": 128.0, "GPU": 12.0}) == []
    (problem,) = check_fit(plan_placement(tp4), nodes)
    assert problem.startswith("1 of 5 bundles fit on no node")


def test_strict_strategies():
    r = _recipe(
        rollout={"num_workers": 2, "gpus_per_worker": 1},
        placement={"learner_gpus_per_worker": 1, "strategy": "STRICT_SPREAD"},
    )
    plan = plan_placement(r)  # 3 GPU bundles + 1 reward bundle
    assert check_fit(plan, [{"CPU": 8.0, "GPU": 8.0}] * 4) == []
    (problem,) = check_fit(plan, [{"CPU": 8.0, "GPU": 8.0}] * 3)
    assert "STRICT_SPREAD needs one node per bundle: 4 bundles, 3 nodes" in problem
    packed = plan_placement(
        r.model_copy(
            update={"placement": r.placement.model_copy(update={"strategy": "STRICT_PACK"})}
        )
    )
    assert check_fit(packed, [{"CPU": 8.0, "GPU": 2.0}] * 4)  # 3 GPUs never on one node
    assert check_fit(packed, [{"CPU": 8.0, "GPU": 2.0}, {"CPU": 8.0, "GPU": 4.0}]) == []


def test_dry_run_prints_config_and_placement_documents():
    result = CliRunner().invoke(
        app, ["run", str(TINY), "rollout.num_workers=2", "--dry-run"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    config, plan = list(yaml.safe_load_all(result.stdout))
    assert config["rollout"]["num_workers"] == 2
    assert config["placement"]["colocate"] is False
    assert plan["placement_plan"]["totals"] == {"CPU": 2 * 1.0 + 1.0 + 0.5, "GPU": 0.0}
    assert "target_cluster" not in plan  # the tiny recipe names no cluster
    assert plan["memory_plan"]["source"] == "model.tiny" and plan["memory_plan"]["fits"] is None


def test_dry_run_fails_when_the_described_cluster_is_too_small():
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(TINY),
            "rollout.gpus_per_worker=1",
            "placement.nodes=1",
            "placement.gpus_per_node=0",
            "--dry-run",
        ],
    )
    assert result.exit_code == 2
    assert "placement does not fit placement.nodes" in result.stderr
    assert "Traceback" not in result.output


def test_paper_recipe_fits_its_two_node_cluster():
    r = load_recipe(PAPER)
    assert r.placement.colocate and r.rollout.tensor_parallel == 2
    text, problems = placement_report(r)
    assert problems == []
    plan = yaml.safe_load(text.removeprefix("---\n"))
    assert plan["placement_plan"]["totals"]["GPU"] == 16.0
    assert plan["target_cluster"]["fits"] is True
    assert cluster_of(r) == [{"GPU": 8.0, "CPU": 96.0}] * 2


def test_run_starts_the_paper_placement_and_refuses_what_it_cannot():
    assert unsupported_by_controller(load_recipe(PAPER)) == []  # colocated, TP 2: it runs
    inline = load_recipe(PAPER, ["placement.colocate=false", "ray.enabled=false"])
    (problem,) = unsupported_by_controller(inline)
    assert problem.startswith("placement.learner_workers=16 needs ray.enabled: true")
    two_gpu_ranks = ["placement.learner_workers=8", "placement.learner_gpus_per_worker=2"]
    (problem,) = unsupported_by_controller(load_recipe(PAPER, two_gpu_ranks))
    assert "set placement.learner_gpus_per_worker: 1 (got 2)" in problem
    (problem,) = unsupported_by_controller(load_recipe(PAPER, ["rollout.weight_sync=broadcast"]))
    assert problem.startswith("rollout.weight_sync: broadcast with placement.colocate: NCCL")
    (problem,) = unsupported_by_controller(load_recipe(PAPER, ["rollout.backend=hf"]))
    assert problem.startswith("rollout.tensor_parallel=2 needs rollout.backend: vllm")
    assert unsupported_by_controller(load_recipe(TINY)) == []
    assert unsupported_by_controller(load_recipe(TINY, ["ray.enabled=false"])) == []


def test_colocated_seats_split_each_gpu_between_learner_and_engines():
    r = load_recipe(PAPER)
    where = seats(r, plan_placement(r))
    # learner rank j: bundle j, half its GPU; engine i: no GPU itself, its 2 vLLM TP workers
    # take the other half of bundles 2i and 2i+1; its 4 CPUs are spread over them
    assert where["learner"] == [Seat(j, 4.0, 0.5) for j in range(16)]
    assert where["rollout"] == [Seat(2 * i, 2.0, 0.0, (2 * i, 2 * i + 1), 0.5) for i in range(8)]
    options, env = engine_options(r, where["rollout"][3])
    assert options == {
        "sleep_level": 1,
        "gpu_memory_utilization": 0.4,
        "tensor_parallel_size": 2,
        "distributed_executor_backend": "ray",
    }
    assert env == {"VLLM_RAY_BUNDLE_INDICES": "6,7", "VLLM_RAY_PER_WORKER_GPUS": "0.5"}

    inline = load_recipe(PAPER, ["ray.enabled=false"])  # no Ray executor without Ray
    seat = seats(inline, plan_placement(inline))["rollout"][0]
    assert engine_options(inline, seat)[0]["distributed_executor_backend"] == "mp"

    apart = load_recipe(PAPER, ["placement.colocate=false"])
    where = seats(apart, plan_placement(apart))
    assert where["learner"][0] == Seat(0, 4.0, 1.0)
    assert where["rollout"][0] == Seat(16, 4.0, 2.0)  # one 2-GPU bundle: vLLM's processes
    options, env = engine_options(apart, where["rollout"][0])
    assert options["distributed_executor_backend"] == "mp" and env == {}
    assert "sleep_level" not in options and options["gpu_memory_utilization"] == 0.9

    quarter = _recipe(
        rollout={"num_workers": 4, "gpus_per_worker": 0.5},
        placement={"learner_workers": 2, "learner_gpus_per_worker": 1, "colocate": True},
    )
    where = seats(quarter, plan_placement(quarter))
    assert [(s.bundle, s.gpus) for s in where["rollout"]] == [
        (0, 0.25),
        (0, 0.25),
        (1, 0.25),
        (1, 0.25),
    ]
    assert [(s.bundle, s.gpus) for s in where["learner"]] == [(0, 0.5), (1, 0.5)]
    hf = ({"decode": "auto", "compile": False}, {})  # hf: offloads on sleep, decode options only
    assert engine_options(quarter, where["rollout"][0]) == hf


class _Recorder(InlineBackend):
    """The in-process backend, recording each spawn's resource request."""

    def __init__(self):
        self.requests, self.bundles, self.reserved = {}, {}, None

    def reserve(self, bundles, strategy, timeout_s=0.0):
        self.reserved = (bundles, strategy)

    def spawn(self, cls, *args, num_cpus=1.0, num_gpus=0.0, bundle=None, **kwargs):
        self.requests[cls.__name__] = (num_cpus, num_gpus)
        self.bundles[cls.__name__] = bundle
        return super().spawn(cls, *args, num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)


def test_actors_ask_ray_for_the_gpus_the_recipe_gives_them(tmp_path):
    """A real local Ray with 2 logical GPUs: an actor asking for one sees exactly one; the
    controller's spawns carry the recipe's rollout and learner GPU counts."""
    import ray

    from omnisched.config.schema import RayConfig
    from omnisched.orchestration.backend import RayBackend

    class _Probe:  # defined here so that Ray pickles it by value into its workers
        def gpus(self):
            import os

            import ray

            return ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")

        def group(self):
            import ray

            return ray.get_runtime_context().get_placement_group_id()

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False)
    try:
        backend = RayBackend(RayConfig())
        one, none = backend.spawn(_Probe, num_gpus=1), backend.spawn(_Probe, num_cpus=0)
        (ids_one, env_one), (ids_none, env_none) = backend.gather(
            [backend.call(one, _Probe.gpus), backend.call(none, _Probe.gpus)]
        )
        assert len(ids_one) == 1 and env_one == str(ids_one[0])
        assert ids_none == [] and not env_none
        backend.kill(one)

        # the placement group: all bundles held at once, actors placed in their bundle
        backend.reserve([{"CPU": 1.0}, {"CPU": 0.5, "GPU": 1.0}], "PACK")
        inside = backend.spawn(_Probe, num_cpus=0.5, num_gpus=1, bundle=1)
        assert backend.gather([backend.call(inside, _Probe.group)])[0] == backend.pg.id.hex()
        assert ray.available_resources().get("CPU", 0) <= 0.5 + 1e-6  # 1.5 of 2 held
        with pytest.raises(OmniError, match=r"reserve 2 bundles .*1 of 2 bundles fit on no"):
            backend.reserve([{"CPU": 2.0}, {"CPU": 1.0}], "PACK", timeout_s=1.0)
        assert backend.pg is None  # the failed group was removed, the earlier one released
        backend.reserve([{"CPU": 2.0}], "PACK", timeout_s=30.0)  # so 2 CPUs are free again
    finally:
        ray.shutdown()

    from test_e2e import SMALL

    r = load_recipe(
        TINY,
        [
            *SMALL,
            "rollout.gpus_per_worker=1",
            "placement.learner_gpus_per_worker=1",
            f"model.warm_start.cache_dir={tmp_path / 'cache'}",
        ],
    )
    recorder = _Recorder()
    ctrl = Controller(r, tmp_path / "run")
    ctrl.setup(recorder)
    assert recorder.requests["RolloutWorker"] == (1.0, 1.0)
    assert recorder.requests["LearnerWorker"] == (1.0, 1.0)
    assert recorder.requests["RewardWorker"][1] == 0.0
    # every actor in its own bundle of the one placement group the plan describes
    assert recorder.reserved == (plan_placement(r).bundles, "PACK")
    assert recorder.bundles == {
        "LearnerWorker": 0,
        "RolloutWorker": 1,
        "RewardWorker": 2,
        "SchedulerService": None,
    }
