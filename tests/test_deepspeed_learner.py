"""DeepSpeedLearner on DeepSpeed's CPU accelerator: it takes the torch learner's GRPO step under
ZeRO-2 and ZeRO-3, hands back full weights, and averages gradients over two data-parallel ranks.

Run as a script, this file is one rank of the two-rank test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port
from pydantic import ValidationError
from test_torch_learner import PAD, completion_logprobs, ragged_samples, tiny_model
from transformers import Qwen2ForCausalLM

from omnisched.config.schema import DeepSpeedConfig, LearnerConfig
from omnisched.errors import ConfigError
from omnisched.learner import LEARNERS, Learner, TorchLearner, TrainSample

torch.set_num_threads(2)
# ZeRO-3 keeps parameters under 1e5 elements whole on every rank; 0 shards even the tiny model's.
SHARD_ALL = {"zero_optimization": {"stage3_param_persistence_threshold": 0}}


def ds_cfg(stage: int, **kw: object) -> LearnerConfig:
    ds = DeepSpeedConfig(zero_stage=stage, overrides=SHARD_ALL if stage == 3 else {})
    return LearnerConfig(deepspeed=ds, **kw)


def deepspeed_learner(model: Qwen2ForCausalLM, cfg: LearnerConfig) -> Learner:
    return LEARNERS.get("deepspeed")(model, cfg, pad_token_id=PAD)


def test_registered_and_satisfies_protocol() -> None:
    learner = deepspeed_learner(tiny_model(), ds_cfg(2))
    assert type(learner).__name__ == "DeepSpeedLearner"
    assert isinstance(learner, Learner)


def test_config_rejects_unknown_fields_and_merges_overrides() -> None:
    from omnisched.learner.deepspeed_learner import ds_config

    with pytest.raises(ValidationError, match="zero_stag"):
        LearnerConfig.model_validate({"deepspeed": {"zero_stag": 3}})
    with pytest.raises(ValidationError, match="less than or equal to 3"):
        DeepSpeedConfig(zero_stage=4)
    cfg = ds_cfg(3, max_grad_norm=0.5)
    cfg.deepspeed.offload_optimizer = True
    generated = ds_config(cfg)
    assert generated["zero_optimization"] == {
        "stage": 3,
        "offload_optimizer": {"device": "cpu"},
        "stage3_param_persistence_threshold": 0,
    }
    assert generated["gradient_clipping"] == 0.5


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_advantage_sign_moves_completion_logprob(stage: int) -> None:
    model = tiny_model()
    good = TrainSample([5, 6, 7], [8, 9, 10, 11], advantage=1.0)
    bad = TrainSample([5, 6, 7], [12, 13, 14], advantage=-1.0)
    before = [sum(completion_logprobs(model, s)) for s in (good, bad)]
    learner = deepspeed_learner(model, ds_cfg(stage, lr=1e-2, bf16=True, micro_batch_size=1))
    for _ in range(4):
        metrics = learner.train_step([good, bad])
    fresh = tiny_model(seed=7)
    fresh.load_state_dict(learner.state_dict())
    after = [sum(completion_logprobs(fresh, s)) for s in (good, bad)]
    assert after[0] > before[0] + 1.0
    assert after[1] < before[1] - 1.0
    assert metrics["tokens"] == 7
    assert {"loss", "clip_frac", "grad_norm", "entropy", "step_time_s"} <= set(metrics)


CHUNKED = {"micro_batch_tokens": 12, "logits_chunk_tokens": 4}
BY_TOKENS = {"micro_batch_tokens": 12}


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "batching"), [(2, {}), (3, {}), (2, CHUNKED), (3, BY_TOKENS)])
def test_first_step_matches_torch_learner(stage: int, batching: dict) -> None:
    """Same loss, pre-clip grad norm and updated weights as TorchLearner (fp32, clipping active,
    three micro-batches accumulated by DeepSpeed into one step, a KL term); also with
    micro-batches by a token budget (and logits in chunks, ZeRO-2) on the DeepSpeed side only."""
    samples = ragged_samples(6)
    samples[2].old_logprobs = [-3.0] * len(samples[2].completion_ids)  # an off-policy sample
    kw = dict(lr=1e-2, bf16=False, micro_batch_size=2, kl_coef=0.05, max_grad_norm=0.5)
    torch_learner = TorchLearner(tiny_model(), LearnerConfig(**kw), PAD)
    expected = torch_learner.train_step(samples)
    learner = deepspeed_learner(tiny_model(), ds_cfg(stage, **kw, **batching))
    got = learner.train_step(samples)
    assert expected["grad_norm"] > kw["max_grad_norm"]  # the clip is exercised
    for key in ("loss", "grad_norm", "entropy", "ratio"):
        assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
    state = learner.state_dict()
    for name, value in torch_learner.state_dict().items():
        torch.testing.assert_close(state[name], value, atol=1e-5, rtol=1e-4)


def test_logits_in_chunks_refuse_zero3_naming_the_fields() -> None:
    needle = r"learner\.logits_chunk_tokens needs learner\.deepspeed\.zero_stage <= 2"
    with pytest.raises(ValidationError, match=needle):
        ds_cfg(3, logits_chunk_tokens=64, backend="deepspeed")
    ds_cfg(2, logits_chunk_tokens=64, backend="deepspeed")
    torch_cfg = ds_cfg(3, logits_chunk_tokens=64)  # the torch backend ignores `deepspeed`
    with pytest.raises(ConfigError, match=needle):
        deepspeed_learner(tiny_model(), torch_cfg)  # handed to DeepSpeed anyway


@pytest.mark.slow
def test_accumulation_steps_split_a_train_step_into_optimizer_steps() -> None:
    """gradient_accumulation_steps=1: one optimizer step per micro-batch, each normalised over
    its own samples, as TorchLearner stepping on each micro-batch in turn (longest first)."""
    samples = ragged_samples(6)
    kw = dict(lr=1e-2, bf16=False, micro_batch_size=2)
    cfg = ds_cfg(2, **kw)
    cfg.deepspeed.gradient_accumulation_steps = 1
    learner = deepspeed_learner(tiny_model(), cfg)
    learner.train_step(samples)
    torch_learner = TorchLearner(tiny_model(), LearnerConfig(**kw), PAD)
    longest = sorted(samples, key=lambda s: len(s.prompt_ids) + len(s.completion_ids), reverse=True)
    for i in range(0, len(longest), 2):
        torch_learner.train_step(longest[i : i + 2])
    state = learner.state_dict()
    for name, value in torch_learner.state_dict().items():
        torch.testing.assert_close(state[name], value, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_zero3_state_dict_and_save_give_the_full_weights(tmp_path: Path) -> None:
    learner = deepspeed_learner(tiny_model(), ds_cfg(3, lr=1e-2, bf16=False))
    learner.train_step(ragged_samples())
    assert learner.model.lm_head.weight.numel() == 0  # sharded: only DeepSpeed's placeholder
    state = learner.state_dict()
    assert all(t.device.type == "cpu" and not t.requires_grad for t in state.values())
    assert state["lm_head.weight"].shape == (40, 32)
    fresh = tiny_model(seed=123)
    fresh.load_state_dict(state)
    ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
    learner.engine.eval()
    with torch.no_grad():
        expected = learner.engine(input_ids=ids).logits
        torch.testing.assert_close(fresh(ids).logits, expected, atol=0, rtol=0)
    learner.save(tmp_path / "ckpt")
    reloaded = Qwen2ForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    assert reloaded.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, expected, atol=0, rtol=0)
    learner.train_step(ragged_samples())  # a snapshot: later steps leave it unchanged
    assert torch.equal(fresh.state_dict()["lm_head.weight"], state["lm_head.weight"])
    assert not torch.equal(learner.state_dict()["lm_head.weight"], state["lm_head.weight"])


def rank_samples(rank: int) -> list[TrainSample]:
    """Different samples per rank, with different sample and token counts; rank 0's third is a
    pad (as `deal` makes them: no loss), so both ranks run 3 micro-batches of 1."""
    if rank == 0:
        return [
            TrainSample([5, 6], [8, 9, 10], advantage=1.0),
            TrainSample([7, 3], [12, 13], advantage=0.5),
            TrainSample([7, 3], [12], advantage=0.0, pad=True),
        ]
    return [
        TrainSample([5, 7], [9, 9, 9, 11], advantage=-1.0),
        TrainSample([7, 3], [13], advantage=1.5),
        TrainSample([4], [14, 15], advantage=-0.5),
    ]


UNION = (5, 12)  # real samples and their completion tokens over both ranks


def run_rank(out: Path) -> None:
    """One data-parallel rank: a ZeRO-2 step on this rank's samples, normalised by the whole
    batch's counts, the same by a token budget (the ranks' micro-batch counts differ until one
    splits), then a step with a micro-batch count the other rank cannot reach (both refuse it)."""
    rank = int(os.environ["RANK"])
    learner = deepspeed_learner(tiny_model(), ds_cfg(2, lr=1e-2, bf16=False, micro_batch_size=1))
    metrics = learner.train_step(rank_samples(rank), *UNION)
    by_count = learner.cfg
    # by a 6-token budget rank 0 makes 3 micro-batches, rank 1 ([6], [3, 3]) 2: it halves one
    learner.cfg = by_count.model_copy(update={"micro_batch_tokens": 6})
    budget_metrics = learner.train_step(rank_samples(rank), *UNION)
    learner.cfg = by_count
    state = learner.state_dict()
    torch.save({**state, "metrics": metrics, "budget": budget_metrics}, out / f"rank{rank}.pt")
    try:
        learner.train_step(rank_samples(rank) * (1 + rank), *UNION)
    except ValueError as err:
        (out / f"rank{rank}.err").write_text(str(err))
    torch.distributed.barrier()  # neither rank exits while its peer still talks to it
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_end_with_identical_all_reduced_weights(tmp_path: Path) -> None:
    port = free_port()
    env = dict(
        os.environ, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1",
    )  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(tmp_path)],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    union = [s for r in range(2) for s in rank_samples(r) if not s.pad]
    assert (len(union), sum(len(s.completion_ids) for s in union)) == UNION
    single = TorchLearner(tiny_model(), LearnerConfig(lr=1e-2, bf16=False), PAD)
    # the steps the two ranks took together, pad or not, by count then by token budget
    for key in ("metrics", "budget"):
        expected = single.train_step(union)
        got = [ranks[r].pop(key) for r in range(2)]
        # AdamW's first step hardly depends on the gradient's scale: check the loss and the norm
        assert (got[0]["loss"] + got[1]["loss"]) / 2 == pytest.approx(expected["loss"], rel=1e-5)
        assert got[0]["grad_norm"] == pytest.approx(expected["grad_norm"], rel=1e-5)
    for name, value in single.state_dict().items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        torch.testing.assert_close(ranks[0][name], value, atol=1e-5, rtol=1e-4)
    for r in range(2):
        assert "ranks got between 3 and 6 micro-batches" in (tmp_path / f"rank{r}.err").read_text()


if __name__ == "__main__":
    torch.set_num_threads(1)
    run_rank(Path(sys.argv[1]))
