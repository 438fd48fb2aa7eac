"""TorchLearner on a tiny Qwen2 built from config: it learns in the advantage's direction."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from omnisched.config.schema import LearnerConfig
from omnisched.learner import LEARNERS, Learner, TorchLearner, TrainSample

PAD = 0
torch.set_num_threads(2)


def tiny_model(seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=PAD, tie_word_embeddings=False,
    )  # fmt: skip
    return Qwen2ForCausalLM(cfg).eval()


def completion_logprobs(model: Qwen2ForCausalLM, sample: TrainSample) -> list[float]:
    """Independent reference: full forward, full log_softmax, one token at a time."""
    ids = torch.tensor([sample.prompt_ids + sample.completion_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    p = len(sample.prompt_ids)
    return [float(logp[p + j - 1, t]) for j, t in enumerate(sample.completion_ids)]


def ragged_samples(n: int = 6, seed: int = 1) -> list[TrainSample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p, c = 2 + i % 4, 1 + (3 * i) % 7
        ids = torch.randint(1, 40, (p + c,), generator=g).tolist()
        out.append(TrainSample(ids[:p], ids[p:], advantage=float(i % 3) - 1.0))
    return out


def test_registered_and_satisfies_protocol() -> None:
    learner = LEARNERS.get("torch")(tiny_model(), LearnerConfig(), pad_token_id=PAD)
    assert isinstance(learner, TorchLearner)
    assert isinstance(learner, Learner)


def test_advantage_sign_moves_completion_logprob() -> None:
    model = tiny_model()
    good = TrainSample([5, 6, 7], [8, 9, 10, 11], advantage=1.0)
    bad = TrainSample([5, 6, 7], [12, 13, 14], advantage=-1.0)
    before = [sum(completion_logprobs(model, s)) for s in (good, bad)]
    learner = TorchLearner(model, LearnerConfig(lr=1e-2, bf16=True), pad_token_id=PAD)
    for _ in range(5):
        metrics = learner.train_step([good, bad])
    after = [sum(completion_logprobs(model, s)) for s in (good, bad)]
    assert after[0] > before[0] + 1.0
    assert after[1] < before[1] - 1.0
    assert metrics["tokens"] == 7
    assert {"loss", "clip_frac", "grad_norm", "entropy", "step_time_s"} <= set(metrics)
    assert 0 < metrics["entropy"] <= torch.log(torch.tensor(40.0)).item()


def test_kl_zero_at_start_then_grows_and_reference_stays_frozen() -> None:
    model = tiny_model()
    learner = TorchLearner(model, LearnerConfig(lr=1e-2, kl_coef=0.1, bf16=False), PAD)
    assert learner.ref_model is not None and learner.ref_model is not model
    ref_before = copy.deepcopy(learner.ref_model.state_dict())
    samples = ragged_samples()
    kls = [learner.train_step(samples)["kl"] for _ in range(4)]
    assert kls[0] == pytest.approx(0.0, abs=1e-7)
    assert 0 < kls[1] < kls[2] < kls[3]
    for k, v in learner.ref_model.state_dict().items():
        torch.testing.assert_close(v, ref_before[k], atol=0, rtol=0)


def losses_and_gradients(samples, cfgs, step) -> tuple[list[float], list[list[torch.Tensor]]]:
    """Per config, a fresh tiny learner's loss and parameter gradients after `step(learner,
    samples)` (`TorchLearner.train_step` or `.compute_gradients`)."""
    losses, grads = [], []
    for cfg in cfgs:
        learner = TorchLearner(tiny_model(), cfg, PAD)
        losses.append(step(learner, samples)["loss"])
        grads.append([p.grad.clone() for p in learner.params])
    return losses, grads


@pytest.mark.parametrize("loss_agg", ["token-mean", "sequence-mean", "dr-grpo"])
def test_micro_batching_gives_the_full_batch_gradient(loss_agg: str) -> None:
    samples = ragged_samples(7)
    samples[2].old_logprobs = [-3.0] * len(samples[2].completion_ids)  # an off-policy sample
    cfgs = [
        LearnerConfig(micro_batch_size=micro, loss_agg=loss_agg, bf16=False, kl_coef=0.05)
        for micro in (2, 64)
    ]
    losses, grads = losses_and_gradients(samples, cfgs, TorchLearner.train_step)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-7)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("loss_agg", ["token-mean", "sequence-mean", "dr-grpo"])
def test_token_budget_micro_batches_give_the_whole_batch_gradient(loss_agg: str) -> None:
    """Micro-batches of at most 12 tokens (padding included; 6 of them here) and one micro-batch
    of every sample: the same loss and gradient, KL term and an off-policy sample included."""
    from omnisched.learner.batching import plan_micro_batches

    samples = ragged_samples(7)
    samples[2].old_logprobs = [-3.0] * len(samples[2].completion_ids)
    assert len(plan_micro_batches(samples, 1, max_tokens=12)) == 6
    cfgs = [
        LearnerConfig(loss_agg=loss_agg, bf16=False, kl_coef=0.05, **budget)
        for budget in ({"micro_batch_tokens": 12}, {"micro_batch_size": len(samples)})
    ]
    losses, grads = losses_and_gradients(samples, cfgs, TorchLearner.compute_gradients)
    assert losses[0] == pytest.approx(losses[1], rel=1e-6, abs=1e-7)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)


def test_logits_in_chunks_give_the_same_step_as_whole_logits() -> None:
    """fp32, temperature 0.7, a KL reference: chunks of 3 completion tokens and the whole
    micro-batch's logits give the same loss, gradients (to 1e-6), logprobs and step."""
    samples = ragged_samples(7)
    samples[2].old_logprobs = [-3.0] * len(samples[2].completion_ids)
    kw = dict(bf16=False, kl_coef=0.05, lr=1e-2, micro_batch_size=3)
    runs = []
    for chunk in (None, 3):
        learner = TorchLearner(
            tiny_model(), LearnerConfig(logits_chunk_tokens=chunk, **kw), PAD, temperature=0.7
        )
        grads = learner.compute_gradients(samples)
        runs.append((learner, grads, [p.grad.clone() for p in learner.params]))
    (whole, g_whole, p_whole), (chunked, g_chunked, p_chunked) = runs
    assert g_chunked.keys() == g_whole.keys()
    for key, value in g_whole.items():
        assert g_chunked[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
    for a, b in zip(p_chunked, p_whole, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    for a, b in zip(chunked.logprobs(samples), whole.logprobs(samples), strict=True):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-6, rtol=1e-6)
    m_whole, m_chunked = whole.train_step(samples), chunked.train_step(samples)
    for key in ("loss", "kl", "entropy", "ratio", "grad_norm"):
        assert m_chunked[key] == pytest.approx(m_whole[key], rel=1e-5, abs=1e-6), key
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(chunked.state_dict()[name], value, atol=1e-5, rtol=1e-4)


def test_old_logprobs_are_aligned_with_completion_tokens() -> None:
    model = tiny_model()
    samples = ragged_samples()
    for s in samples:  # the sampler's logprobs equal the policy's: ratio exactly 1
        s.old_logprobs = completion_logprobs(model, s)
    on_policy = TorchLearner(copy.deepcopy(model), LearnerConfig(bf16=False), PAD)
    m_on = on_policy.train_step(
        [TrainSample(s.prompt_ids, s.completion_ids, s.advantage) for s in samples]
    )
    learner = TorchLearner(model, LearnerConfig(bf16=False), PAD)
    m = learner.train_step(samples)
    assert m["ratio"] == pytest.approx(1.0, abs=1e-5)
    assert m["clip_frac"] == 0.0
    assert m["grad_norm"] == pytest.approx(m_on["grad_norm"], rel=1e-4)


def test_stale_old_logprobs_clip_the_update() -> None:
    samples = ragged_samples()
    for s in samples:  # ratio = e > 1 + eps: positive advantages clipped, no gradient from them
        s.advantage = 1.0
        s.old_logprobs = [lp - 1.0 for lp in completion_logprobs(tiny_model(), s)]
    m = TorchLearner(tiny_model(), LearnerConfig(bf16=False), PAD).train_step(samples)
    assert m["clip_frac"] == pytest.approx(1.0)
    assert m["grad_norm"] == 0.0


def test_second_ppo_epoch_sees_an_off_policy_ratio() -> None:
    learner = TorchLearner(tiny_model(), LearnerConfig(lr=1e-2, ppo_epochs=2, bf16=False), PAD)
    m = learner.train_step(ragged_samples())
    assert m["ratio"] != pytest.approx(1.0, abs=1e-6)  # epoch 1 has ratio 1, epoch 2 does not


def test_state_dict_loads_into_fresh_copy_with_identical_logits(tmp_path: Path) -> None:
    learner = TorchLearner(tiny_model(), LearnerConfig(lr=1e-2, bf16=True), PAD)
    learner.train_step(ragged_samples())
    state = learner.state_dict()
    assert all(t.device.type == "cpu" and not t.requires_grad for t in state.values())
    fresh = tiny_model(seed=123)
    fresh.load_state_dict(state)
    ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
    learner.model.eval()
    with torch.no_grad():
        expected = learner.model(ids).logits
        torch.testing.assert_close(fresh(ids).logits, expected, atol=0, rtol=0)
    learner.save(tmp_path / "ckpt")
    reloaded = Qwen2ForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, expected, atol=0, rtol=0)
    learner.train_step(ragged_samples())  # a snapshot: later steps leave it unchanged
    torch.testing.assert_close(fresh.state_dict()["lm_head.weight"], state["lm_head.weight"])
    assert not torch.equal(learner.model.lm_head.weight, state["lm_head.weight"])


def test_rejects_misaligned_old_logprobs() -> None:
    learner = TorchLearner(tiny_model(), LearnerConfig(), PAD)
    with pytest.raises(ValueError, match="sample 0: 1 old_logprobs for 2 completion tokens"):
        learner.train_step([TrainSample([1, 2], [3, 4], 1.0, old_logprobs=[-1.0])])


def test_learner_worker_computes_group_advantages_and_skips_tied_groups(tmp_path: Path) -> None:
    from omnisched.config.schema import TinyModelConfig
    from omnisched.learner.base import ScoredGroup
    from omnisched.model import build_char_tokenizer, build_tiny_model, save_model
    from omnisched.orchestration.workers import LearnerWorker

    tok = build_char_tokenizer()
    cfg = TinyModelConfig(
        hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64
    )
    save_model(build_tiny_model(cfg, tok, 0), tok, tmp_path)
    worker = LearnerWorker("torch", str(tmp_path), LearnerConfig(bf16=False), 1, 0)
    before = {k: v.clone() for k, v in worker.state_dict().items()}
    tied = ScoredGroup([5, 6], [[7, 2], [8, 2], [9, 2]], [1.0, 1.0, 1.0])
    assert worker.train_groups([tied, tied]) == {"samples_trained": 0}
    assert all(torch.equal(before[k], v) for k, v in worker.state_dict().items())

    varied = ScoredGroup([5, 6], [[7, 2], [8, 2], [9, 2]], [1.0, 0.0, 0.0])
    metrics = worker.train_groups([tied, varied])
    assert metrics["samples_trained"] == 3 and "loss" in metrics
    assert any(not torch.equal(before[k], v) for k, v in worker.state_dict().items())

    # what the controller ships to bf16 engines: each float tensor rounded as a bf16 load would
    full, half = worker.state_dict(), worker.state_dict("bfloat16")
    assert full.keys() == half.keys()
    for name, value in full.items():
        assert half[name].dtype == torch.bfloat16
        assert torch.equal(half[name], value.to(torch.bfloat16))
        engine_side = torch.empty_like(value, dtype=torch.bfloat16).copy_(value)  # load_state_dict
        assert torch.equal(half[name], engine_side)


def tied_groups() -> list:
    """3 groups of 3 ragged completions; the middle group's rewards tie."""
    from omnisched.learner.base import ScoredGroup

    samples = ragged_samples(9, seed=4)
    rewards = [[1.0, 0.0, 0.5], [0.3, 0.3, 0.3], [0.0, 0.0, 1.0]]
    return [
        ScoredGroup(
            samples[3 * i].prompt_ids, [s.completion_ids for s in samples[3 * i : 3 * i + 3]], r
        )
        for i, r in enumerate(rewards)
    ]


@pytest.mark.parametrize("loss_agg", ["token-mean", "sequence-mean", "dr-grpo"])
def test_leaving_out_tied_groups_never_changes_the_gradient(loss_agg: str) -> None:
    """The batch as drawn (every completion, zero advantages included) and the `train_batch`
    (tied group left out, the whole batch's counts kept) give the same loss and gradient."""
    from omnisched.learner.batch import train_batch
    from omnisched.learner.grpo import group_advantages

    groups = tied_groups()
    cfg = LearnerConfig(loss_agg=loss_agg, bf16=False, micro_batch_size=2)
    adv = group_advantages(torch.tensor([g.rewards for g in groups]), eps=cfg.adv_eps)
    everything = [
        TrainSample(g.prompt_ids, c, float(adv[i, j]))
        for i, g in enumerate(groups)
        for j, c in enumerate(g.completion_ids)
    ]
    batch = train_batch(groups, cfg)
    assert len(batch.samples) == 5 and batch.num_seqs == 9  # the tie, and a reward at its mean
    full = TorchLearner(tiny_model(), cfg, PAD, max_completion_len=8)
    skipped = TorchLearner(tiny_model(), cfg, PAD, max_completion_len=8)
    m_full = full.compute_gradients(everything)
    m_skip = skipped.compute_gradients(batch.samples, batch.num_seqs, batch.num_tokens)
    assert m_skip["loss"] == pytest.approx(m_full["loss"], rel=1e-6, abs=1e-7)
    for a, b in zip(full.params, skipped.params, strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-7, rtol=1e-5)
    # normalised by what it trained, the shrunken batch would weigh its samples higher
    naive = TorchLearner(tiny_model(), cfg, PAD, max_completion_len=8)
    naive.compute_gradients(batch.samples)
    ratio = naive.params[0].grad.norm() / full.params[0].grad.norm()
    assert ratio > 1.2


@pytest.mark.parametrize(
    ("temperature", "decode"), [(0.7, "drop"), (1.0, "drop"), (1.5, "drop"), (0.7, "mask")]
)
def test_learner_logprobs_equal_the_engines_on_policy(
    tmp_path: Path, temperature: float, decode: str
) -> None:
    """The HF engine samples at T and returns the sampled tokens' logprobs; the learner's
    logprobs of the same tokens at T agree, so the on-policy importance ratio is 1, whichever
    decode loop sampled them (rows dropped from the batch, or masked in a static cache)."""
    from omnisched.config.schema import TinyModelConfig
    from omnisched.model import build_char_tokenizer, build_tiny_model, load_model, save_model
    from omnisched.rollout import HFEngine, SamplingParams

    tok = build_char_tokenizer()
    cfg = TinyModelConfig(
        hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64
    )
    save_model(build_tiny_model(cfg, tok, 0), tok, tmp_path)
    engine = HFEngine(str(tmp_path), dtype="float32", decode=decode)
    params = SamplingParams(n=3, max_new_tokens=6, temperature=temperature, seed=0)
    done = [c for g in engine.generate(["ab>", "hello"], params) for c in g]
    model, _ = load_model(tmp_path, "float32")
    learner = TorchLearner(
        model, LearnerConfig(bf16=False), tok.pad_token_id, temperature=temperature
    )
    samples = [TrainSample(c.prompt_ids, c.token_ids, 1.0) for c in done]
    for ours, c in zip(learner.logprobs(samples), done, strict=True):
        torch.testing.assert_close(
            torch.tensor(ours), torch.tensor(c.logprobs), atol=2e-5, rtol=1e-5
        )
    # at T != 1 the temperature-1 logprobs would not be the sampler's
    if temperature != 1.0:
        plain = TorchLearner(model, LearnerConfig(bf16=False), tok.pad_token_id)
        assert plain.logprobs(samples[:1])[0] != pytest.approx(done[0].logprobs, abs=1e-3)
