"""Colocation on a local Ray with logical GPUs: the paper recipe's placement reserved and every
actor seated in it (learner ranks and vLLM tensor-parallel workers sharing each GPU), and a real
colocated run whose engines sleep through every learner step."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import ray.cloudpickle

from omnisched.config import load_recipe
from omnisched.config.schema import RayConfig
from omnisched.orchestration.backend import RayBackend
from omnisched.orchestration.controller import Controller
from omnisched.orchestration.placement import plan_placement
from omnisched.orchestration.services import RewardWorker
from omnisched.orchestration.workers import LearnerWorker, RolloutWorker

pytestmark = pytest.mark.slow
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers lack tests/
ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "recipes/omni-thinker-7b.yaml"
ROWS = {
    "math": {"prompt": "1+1=", "answer": "2"},
    "code": {"prompt": "f(x)=", "tests": "assert f(1) == 1", "entry_point": "f"},
    "qa": {"prompt": "who?", "reference": "me"},
    "creative": {"prompt": "a line"},
}


class _Seat:
    """Stands in for a model-holding actor: reports where Ray seated it. An engine with
    VLLM_RAY_BUNDLE_INDICES in its env starts one TP worker per bundle as vLLM's Ray executor
    does (num_cpus 0, VLLM_RAY_PER_WORKER_GPUS each, in the caller's placement group)."""

    def __init__(self, kind: str, *args, **kwargs) -> None:
        import ray

        self.kind = kind
        env = args[5] if kind == "RolloutWorker" and len(args) > 5 else {}
        self.shards = []
        if env and "VLLM_RAY_BUNDLE_INDICES" in env:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            pg = ray.util.get_current_placement_group()
            gpus = float(env["VLLM_RAY_PER_WORKER_GPUS"])
            for index in map(int, env["VLLM_RAY_BUNDLE_INDICES"].split(",")):
                strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index)
                worker = ray.remote(num_cpus=0, num_gpus=gpus, scheduling_strategy=strategy)
                self.shards.append(worker(_Shard).remote())

    def rendezvous(self):
        return "127.0.0.1", 0

    def join(self, rank, addr, port):
        return rank

    def gpus(self) -> list[list[int]]:
        """The GPU ids of this actor, or of each of its TP workers."""
        import ray

        if self.shards:
            return ray.get([s.gpus.remote() for s in self.shards])
        return [ray.get_gpu_ids()]


class _Shard:
    def gpus(self):
        import ray

        return ray.get_gpu_ids()


class _SeatingBackend(RayBackend):
    """Ray, with model-holding actors replaced by `_Seat`s asking for the same resources."""

    def spawn(self, cls, *args, num_cpus=1.0, num_gpus=0.0, bundle=None, **kwargs):
        if cls in (RolloutWorker, LearnerWorker, RewardWorker):
            args, cls = (cls.__name__, *args), _Seat
        return super().spawn(
            cls, *args, num_cpus=num_cpus, num_gpus=num_gpus, bundle=bundle, **kwargs
        )


def _paper_overrides(tmp_path: Path, model: str) -> list[str]:
    overrides = [f"model.path={model}", f"run.output_dir={tmp_path}"]
    for i, (name, row) in enumerate(ROWS.items()):
        for split in ("train", "test"):
            (tmp_path / f"{name}-{split}.jsonl").write_text(json.dumps(row) + "\n")
        overrides += [
            f"domains.{i}.options.path={tmp_path / f'{name}-train.jsonl'}",
            f"domains.{i}.options.eval_path={tmp_path / f'{name}-test.jsonl'}",
            f"domains.{i}.eval_size=1",
        ]
    return overrides


def _tiny_folder(tmp_path: Path) -> str:
    from omnisched.config.schema import TinyModelConfig
    from omnisched.model import build_char_tokenizer, build_tiny_model
    from omnisched.model.build import save_model

    tiny = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1)
    tok = build_char_tokenizer()
    return str(save_model(build_tiny_model(tiny, tok, seed=0), tok, tmp_path / "model"))


def test_paper_recipe_setup_seats_every_actor_on_16_logical_gpus(tmp_path):
    """`omnisched run recipes/omni-thinker-7b.yaml` gets past its former refusal: the controller
    reserves the 20-bundle placement group on 2 x 8 logical GPUs and starts every actor in it;
    learner rank j and a vLLM TP worker of engine j // 2 share GPU j."""
    import ray

    recipe = load_recipe(PAPER, _paper_overrides(tmp_path, _tiny_folder(tmp_path)))
    ray.init(num_cpus=100, num_gpus=16, include_dashboard=False)  # logical: nothing runs on them
    backend = _SeatingBackend(RayConfig())
    try:
        ctrl = Controller(recipe, tmp_path / "run")
        ctrl.setup(backend)
        assert backend.pg is not None
        assert backend.pg.bundle_specs == plan_placement(recipe).bundles
        learner = ray.get([w.gpus.remote() for w in ctrl.learner.workers])
        engines = ray.get([w.gpus.remote() for w in ctrl.rollout.workers])
    finally:
        backend.shutdown()
        ray.shutdown()
    by_learner = [ids[0] for (ids,) in learner]
    assert sorted(by_learner) == list(range(16))  # one GPU per rank, all distinct
    for i, shards in enumerate(engines):
        assert [ids for ids in shards] == [[by_learner[2 * i]], [by_learner[2 * i + 1]]]


def test_colocated_run_sleeps_its_engines_through_every_learner_step(tmp_path):
    """A real run on 1 logical GPU: the learner rank and two engines of half its share time-share
    it; the engines sleep before each learner step and wake for the next generation (a generate
    on a sleeping engine fails the run)."""
    import ray
    from test_weight_sync import _recipe

    recipe = _recipe(
        tmp_path,
        rollout={"num_workers": 2, "gpus_per_worker": 0.5, "weight_sync": "object_store"},
        placement={"learner_gpus_per_worker": 1, "colocate": True},
        schedule={"steps_per_phase": 2},
    )
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False)
    backend = RayBackend(RayConfig())
    try:
        ctrl = Controller(recipe, tmp_path / "run")
        ctrl.run(backend)
        sleeps = ray.get([w.__ray_call__.remote(_sleeps) for w in ctrl.rollout.workers])
        gpus = ray.get(
            [
                w.__ray_call__.remote(_gpu_ids)
                for w in [*ctrl.rollout.workers, *ctrl.learner.workers]
            ]
        )
    finally:
        backend.shutdown()
        ray.shutdown()
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2]
    assert sleeps == [(2, False), (2, False)]  # slept twice, awake now
    assert gpus == [["0"], ["0"], ["0"]]  # all three on the one GPU


def _sleeps(actor) -> tuple[int, bool]:
    return actor.sleeps, actor.asleep


def _gpu_ids(actor) -> list[str]:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
