"""Weight sync by broadcast over gloo on loopback: exact tensors, an HF engine that follows the
sender's weights, and a real Ray run with `rollout.weight_sync: broadcast`."""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections.abc import Callable, Mapping
from operator import attrgetter
from pathlib import Path

import pytest
import torch
from conftest import free_port

from omnisched.config.schema import ModelConfig, Recipe, TinyModelConfig, WarmStartConfig
from omnisched.errors import OmniError
from omnisched.model import build_char_tokenizer, build_tiny_model, load_model, warm_start
from omnisched.model.build import save_model
from omnisched.orchestration.placement import unsupported_by_controller
from omnisched.rollout import HFEngine, SamplingParams
from omnisched.rollout import weight_sync as ws

HOST = "127.0.0.1"
TINY = TinyModelConfig(
    hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64,
    max_position_embeddings=64,
)  # fmt: skip


class Sender(threading.Thread):
    """Group rank 0 in a thread: joins, then broadcasts each state dict in turn."""

    def __init__(self, port: int, world_size: int, *states: Mapping[str, torch.Tensor], **kw):
        super().__init__(daemon=True)
        self.args, self.states, self.kw = (HOST, port, 0, world_size), states, kw
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            group = ws.join(*self.args, timeout_s=60)
            for state in self.states:
                ws.send(group, state, **self.kw)
        except BaseException as exc:  # surfaced by `finish` in the test's thread
            self.error = exc

    def finish(self) -> None:
        self.join(timeout=60)
        assert not self.is_alive(), "the sender is still waiting"
        if self.error:
            raise self.error


def test_buckets_hand_worked_example():
    meta = [
        ("a", "float32", (3,)),  # 12 bytes -> 16 aligned
        ("b", "bfloat16", (10,)),  # 20 -> 32: 16 + 32 fills the 48-byte bucket
        ("c", "float32", (20,)),  # 80: bigger than a bucket, alone
        ("d", "bool", ()),  # 1 -> 16
        ("e", "float32", (0, 4)),  # 0 bytes joins d's bucket
    ]
    assert ws.buckets(meta, bucket_bytes=48) == [[0, 1], [2], [3, 4]]
    assert ws.buckets(meta) == [[0, 1, 2, 3, 4]]


def test_a_state_dict_arrives_exactly_with_dtypes_shapes_and_tied_names():
    gen = torch.Generator().manual_seed(0)
    embed = torch.randn(7, 5, generator=gen).to(torch.bfloat16)
    state = {
        "embed.weight": embed,
        "norm.weight": torch.randn(5, generator=gen),
        "big": torch.randn(40, 3, generator=gen),  # 480 bytes: over the 256-byte buckets
        "transposed": torch.randn(4, 6, generator=gen).t(),  # not contiguous
        "scale": torch.tensor(0.25, dtype=torch.bfloat16),
        "lm_head.weight": embed,  # tied: the same tensor under a second name
    }
    port = free_port()
    sender = Sender(port, 2, state, bucket_bytes=256)
    sender.start()
    group = ws.join(HOST, port, 1, 2, timeout_s=60)
    meta = ws.weights_meta(state)
    got = list(ws.receive(group, meta, bucket_bytes=256))
    sender.finish()
    assert [name for name, _ in got] == list(state)
    for name, tensor in got:
        assert tensor.dtype == state[name].dtype and tensor.shape == state[name].shape, name
        assert torch.equal(tensor, state[name]), name
    received = dict(got)
    assert received["lm_head.weight"].data_ptr() != received["embed.weight"].data_ptr()
    with pytest.raises(ValueError, match="only group rank 0 sends"):
        ws.send(group, state)


def test_every_tensor_parallel_shard_receives_the_full_tensors():
    """Engine A with 2 TP shards and engine B with 1 (`broadcast_ranks`: A's shards are group
    ranks 1, 2, B's is 3): each shard receives every tensor whole (vLLM's loader then keeps its
    part, e.g. rows of q_proj, columns of o_proj: tested through vLLM in test_vllm_engine)."""
    from omnisched.orchestration.rollout_pool import broadcast_ranks

    world, offsets = broadcast_ranks([2, 1])
    assert (world, offsets) == (4, [1, 3])
    gen = torch.Generator().manual_seed(1)
    state = {"q_proj.weight": torch.randn(8, 4, generator=gen), "o_proj.weight": torch.randn(4, 8)}
    port = free_port()
    sender = Sender(port, world, state)
    got: dict[int, dict[str, torch.Tensor]] = {}

    def shard(rank: int) -> None:
        group = ws.join(HOST, port, rank, world, timeout_s=60)
        got[rank] = dict(ws.receive(group, ws.weights_meta(state)))

    shards = [threading.Thread(target=shard, args=(r,), daemon=True) for r in (1, 2, 3)]
    for t in [sender, *shards]:
        t.start()
    for t in shards:
        t.join(timeout=60)
    sender.finish()
    assert sorted(got) == [1, 2, 3]
    for received in got.values():
        assert all(torch.equal(received[k], v) for k, v in state.items())


def test_an_abort_ends_a_broadcast_that_a_dead_party_stalled():
    """Party 2 joins, then never takes part (as a killed engine): the sender of a 32 MB bucket
    waits for it; `abort` through the group's store ends that wait within a poll, not after the
    group's timeout (600 s)."""
    state = {"w": torch.zeros(8 << 20)}  # 32 MB: more than loopback's socket buffers hold
    port = free_port()
    sender = Sender(port, 3, state)
    sender.start()
    receiver_done = threading.Event()

    def receive() -> None:
        group = ws.join(HOST, port, 1, 3, timeout_s=60)
        with contextlib.suppress(ws.WeightSyncAborted):
            list(ws.receive(group, ws.weights_meta(state)))
        receiver_done.set()

    threading.Thread(target=receive, daemon=True).start()
    stalled = ws.join(HOST, port, 2, 3, timeout_s=60)  # joined, then silent
    time.sleep(2 * ws.POLL_S)
    assert sender.is_alive()  # stalled by party 2
    t0 = time.monotonic()
    assert ws.abort(HOST, port)
    with pytest.raises(ws.WeightSyncAborted, match="group rank 0"):
        sender.finish()
    assert time.monotonic() - t0 < 5 * ws.POLL_S
    assert receiver_done.wait(timeout=10)
    del stalled


def test_an_hf_engine_in_a_group_follows_the_broadcast_weights(tmp_path):
    """A random engine receives a warm-started model's weights (greedy output becomes that
    model's), then the random weights again over the same group."""
    words = ["".join(t) for t in itertools.product("abcd", repeat=3)]
    cfg = ModelConfig(
        tiny=TINY, warm_start=WarmStartConfig(steps=40, batch_size=16, lr=1e-2, cache_dir=tmp_path)
    )
    trained_folder = warm_start(cfg, [(f"{w}>", w) for w in words], 0, threads=2)
    prompts = ["ab>", "cab>", "dcb>", "x"]
    greedy = SamplingParams(max_new_tokens=6, temperature=0)

    def tokens(engine: HFEngine) -> list[list[int]]:
        return [g[0].token_ids for g in engine.generate(prompts, greedy)]

    random = build_tiny_model(TINY, build_char_tokenizer(), seed=0)
    engine = HFEngine(save_model(random, build_char_tokenizer(), tmp_path / "random"))  # bf16
    before = tokens(engine)
    expected = tokens(HFEngine(trained_folder))
    assert before != expected
    trained = load_model(trained_folder, "float32")[0].state_dict()  # fp32, as a learner's
    port = free_port()
    sender = Sender(port, 2, trained, random.state_dict())  # two syncs over one group
    sender.start()
    assert engine.join_weight_group(HOST, port, world_size=2) == 1
    assert engine.receive_weights(ws.weights_meta(trained)) == len(trained)
    assert tokens(engine) == expected
    engine.receive_weights(ws.weights_meta(random.state_dict()))
    sender.finish()
    assert tokens(engine) == before
    assert engine.model.dtype == torch.bfloat16


def _recipe(tmp_path: Path, **overrides: dict) -> Recipe:
    tiny = TINY.model_dump(exclude={"max_position_embeddings"})
    raw = {
        "run": {"name": "bcast", "output_dir": str(tmp_path), "threads": 1},
        "model": {
            "dtype": "float32",  # the engine's copy compares exactly with the learner's
            "tiny": tiny,
            "warm_start": {"enabled": False, "cache_dir": str(tmp_path / "cache")},
        },
        "domains": [{"name": "creative", "type": "creative", "eval_size": 2}],
        "rollout": {"group_size": 4, "max_new_tokens": 10, "weight_sync": "broadcast"},
        "learner": {"lr": 1e-2, "bf16": False, "micro_batch_size": 4},
        "schedule": {"policy": "sequential", "steps_per_phase": 3, "prompts_per_step": 3},
        "eval": {"samples": 1},
    }
    for key, value in overrides.items():
        raw[key] = {**raw.get(key, {}), **value}
    return Recipe.model_validate(raw)


def test_broadcast_needs_ray_and_one_device_kind_each_naming_the_fields(tmp_path):
    from omnisched.orchestration.backend import InlineBackend
    from omnisched.orchestration.controller import Controller

    inline = _recipe(tmp_path, ray={"enabled": False})
    with pytest.raises(OmniError, match=r"^rollout.weight_sync: broadcast needs ray.enabled: true"):
        Controller(inline, tmp_path / "run").setup(InlineBackend())  # before any model loads
    assert unsupported_by_controller(_recipe(tmp_path)) == []
    mixed = _recipe(tmp_path, rollout={"gpus_per_worker": 1})
    (problem,) = unsupported_by_controller(mixed)
    assert "placement.learner_gpus_per_worker=0 and rollout.gpus_per_worker=1" in problem
    with pytest.raises(ValueError, match="weight_sync"):
        _recipe(tmp_path, rollout={"weight_sync": "nccl"})


def _weights(model: str) -> Callable[[object], dict[str, torch.Tensor]]:
    """What an actor's `__ray_call__` runs to copy out the weights of its attribute `model`."""
    get = attrgetter(model)
    return lambda actor: {k: v.detach().clone() for k, v in get(actor).state_dict().items()}


@pytest.mark.slow
def test_a_ray_run_syncs_by_broadcast_and_an_engine_killed_mid_sync_is_seen_in_seconds(
    tmp_path, caplog
):
    """A Ray run whose two HF engines follow the learner by broadcast; then engine 0's process
    is SIGKILLed as a sync starts. The driver sees the death at once and aborts the group
    (engine 1 would otherwise wait for the rest of the broadcast until the group's 600 s
    timeout), replaces engine 0 and syncs both through the object store."""
    import os
    import signal

    import ray

    from omnisched.config.schema import RayConfig
    from omnisched.orchestration.backend import RayBackend
    from omnisched.orchestration.controller import Controller

    learner_model, engine_model = _weights("learner.model"), _weights("engine.model")
    ray.init(num_cpus=4, include_dashboard=False)
    backend = RayBackend(RayConfig())  # ours: the run's actors outlive the run, to inspect them
    try:
        ctrl = Controller(_recipe(tmp_path, rollout={"num_workers": 2}), tmp_path / "run")
        ctrl.run(backend)
        rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
        assert sum(r["samples_trained"] for r in rows if r["kind"] == "train") > 0
        pool = ctrl.rollout
        assert pool.weight_meta is not None and ctrl.restarts["rollout"] == 0  # still broadcast
        learner = ray.get(ctrl.learner.workers[0].__ray_call__.remote(learner_model))
        synced = [ray.get(w.__ray_call__.remote(engine_model)) for w in pool.workers]

        pid = ray.get(pool.workers[0].__ray_call__.remote(lambda actor: os.getpid()))
        t0, wall0 = time.monotonic(), time.time()
        os.kill(pid, signal.SIGKILL)
        pool.sync_weights()
        elapsed = time.monotonic() - t0
        after = [ray.get(w.__ray_call__.remote(engine_model)) for w in pool.workers]
    finally:
        backend.shutdown()  # ends the run's placement group and actors
        ray.shutdown()
    (seen,) = [r for r in caplog.records if "died during the weight broadcast" in r.message]
    detected = seen.created - wall0
    print(f"engine death seen and the group aborted in {detected:.1f} s; synced in {elapsed:.1f} s")
    assert detected < 30  # not the group's 600 s timeout
    assert elapsed < 120  # + a replacement engine started and given the weights
    assert pool.weight_meta is None and ctrl.restarts["rollout"] == 1  # left the broken group
    initial = load_model(ctrl.model_path, "float32")[0].state_dict()
    assert any(not torch.equal(learner[k], initial[k]) for k in initial)  # it trained
    for engine in synced + after:  # by broadcast, then through the object store
        for name, value in learner.items():
            assert torch.equal(engine[name], value), name


def test_in_process_sync_copies_the_learners_live_tensors_into_the_engine(tmp_path, monkeypatch):
    """ray.enabled=false: after `sync_weights` the engine's (bf16) parameters hold the learner's
    (fp32) weights, written into the engine's own storage (data pointers unchanged) from the
    learner's live tensors: no CPU snapshot of its state dict is taken (that path would raise)."""
    from omnisched.orchestration.backend import InlineBackend
    from omnisched.orchestration.learner_group import LearnerGroup
    from omnisched.orchestration.rollout_pool import RolloutPool
    from omnisched.orchestration.workers import LearnerWorker

    tok = build_char_tokenizer()
    trained = save_model(build_tiny_model(TINY, tok, seed=1), tok, tmp_path / "learner")
    start = save_model(build_tiny_model(TINY, tok, seed=0), tok, tmp_path / "engine")
    recipe = _recipe(tmp_path, ray={"enabled": False}, rollout={"weight_sync": "object_store"})
    recipe.model.dtype = "bfloat16"
    backend = InlineBackend()
    learner = LearnerGroup(backend, recipe, str(trained))
    pool = RolloutPool(backend, recipe, str(start), [None])
    pool.follow(learner)
    engine = pool.workers[0].engine.model
    ptrs = {n: t.data_ptr() for n, t in engine.state_dict().items()}
    live = learner.workers[0].learner.model.state_dict()

    def snapshot(*args, **kwargs):
        raise AssertionError("the in-process sync took a CPU snapshot of the learner's weights")

    monkeypatch.setattr(LearnerWorker, "state_dict", snapshot)
    assert any(not torch.equal(t.float(), live[n]) for n, t in engine.state_dict().items())
    pool.sync_weights()
    for name, tensor in engine.state_dict().items():
        assert tensor.dtype == torch.bfloat16 and tensor.data_ptr() == ptrs[name]
        assert torch.equal(tensor, live[name].to(torch.bfloat16)), name
    assert pool.last_sync_s > 0
    with pytest.raises(KeyError, match="missing"):
        pool.workers[0].engine.copy_weights({"lm_head.weight": live["lm_head.weight"]})
