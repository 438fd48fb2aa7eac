"""The HF rollout engine: batched sampling with a KV cache, logprobs, entropies, weight sync."""

import math

import pytest
import torch
from conftest import COPY_HELD_OUT, check_completion_fields, copy_model, random_model

from omnisched.config.schema import TinyModelConfig
from omnisched.model import load_model
from omnisched.rollout import ENGINES, HFEngine, RolloutEngine, SamplingParams

TINY = TinyModelConfig(
    hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
    max_position_embeddings=64,
)  # fmt: skip
HELD_OUT = COPY_HELD_OUT
PROMPTS = ["ab>", "Q: copy fed then stop\n>", "cab>", "x"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    """A random tiny model without near-ties on PROMPTS, and the model warm-started to copy
    3-letter words, verified to copy every held-out word (conftest)."""
    root = tmp_path_factory.mktemp("models")
    return {
        "random": random_model(TINY, root, PROMPTS, max_new_tokens=8),
        "trained": copy_model(TINY, root / "cache", HELD_OUT),
    }


@pytest.fixture(scope="module")
def engines(folders) -> dict[str, HFEngine]:
    return {name: HFEngine(path, dtype="float32") for name, path in folders.items()}


def recompute(model, completion, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Logprobs of the sampled tokens and entropies, by one forward pass over prompt+completion."""
    p, c = completion.prompt_ids, completion.token_ids
    with torch.no_grad():
        logits = model(torch.tensor([p + c])).logits[0, len(p) - 1 : len(p) + len(c) - 1]
    logp = torch.log_softmax(logits.float() / (temperature or 1.0), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, torch.tensor(c)[:, None]).squeeze(1), entropy


def test_engine_is_registered_and_implements_the_protocol(engines):
    assert ENGINES.get("hf") is HFEngine
    assert isinstance(engines["random"], RolloutEngine)


def test_returns_n_completions_per_prompt_with_consistent_fields(engines):
    engine = engines["random"]
    out = engine.generate(PROMPTS, SamplingParams(n=3, max_new_tokens=7, seed=0))
    check_completion_fields(engine, PROMPTS, out, n=3, max_new_tokens=7)
    eos = engine.tokenizer.eos_token_id
    for c in (c for group in out for c in group):
        assert c.finished == (c.token_ids[-1] == eos)
        assert eos not in c.token_ids[:-1]
        assert "<eos>" not in c.text


@pytest.mark.parametrize("model", ["random", "trained"])
@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.6])
def test_logprobs_and_entropies_match_a_forward_pass(engines, folders, model, temperature):
    engine = engines[model]
    reference, _ = load_model(folders[model], "float32")
    params = SamplingParams(n=4, max_new_tokens=8, temperature=temperature, seed=3)
    completions = [c for g in engine.generate(PROMPTS, params) for c in g]
    if model == "trained" and temperature > 1:  # rows finish at different steps: compaction
        assert len({len(c.token_ids) for c in completions}) > 1
    log_v = math.log(len(engine.tokenizer))
    for c in completions:
        logprobs, entropies = recompute(reference, c, temperature)
        assert all(lp <= 0 for lp in c.logprobs)
        assert all(0 <= h <= log_v + 1e-4 for h in c.entropies)
        torch.testing.assert_close(torch.tensor(c.logprobs), logprobs, atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(torch.tensor(c.entropies), entropies, atol=2e-4, rtol=1e-4)


def test_top_p_renormalises_over_the_nucleus(engines):
    params = SamplingParams(n=4, max_new_tokens=6, top_p=0.3, seed=0)
    full = SamplingParams(n=4, max_new_tokens=6, seed=0)
    engine = engines["random"]
    nucleus = [lp for g in engine.generate(PROMPTS, params) for c in g for lp in c.logprobs]
    plain = [lp for g in engine.generate(PROMPTS, full) for c in g for lp in c.logprobs]
    assert all(lp <= 0 for lp in nucleus)
    assert sum(nucleus) / len(nucleus) > sum(plain) / len(plain) + 1.0  # few tokens left


def test_greedy_is_deterministic_and_independent_of_batching(engines, folders):
    params = SamplingParams(max_new_tokens=8, temperature=0)
    engine = engines["random"]
    batched = engine.generate(PROMPTS, params)
    assert engine.generate(PROMPTS, params) == batched
    small = HFEngine(folders["random"], dtype="float32", max_batch=1)
    alone = [small.generate([p], params)[0] for p in PROMPTS]  # no left padding at all
    assert [g[0].token_ids for g in alone] == [g[0].token_ids for g in batched]


def test_same_seed_reproduces_samples_and_another_seed_differs(engines):
    engine = engines["random"]
    texts = {
        seed: [c.text for g in engine.generate(PROMPTS, SamplingParams(n=4, seed=seed)) for c in g]
        for seed in (0, 0, 1)
    }
    again = [c.text for g in engine.generate(PROMPTS, SamplingParams(n=4, seed=0)) for c in g]
    assert again == texts[0] and texts[1] != texts[0]
    assert len(set(texts[0])) > len(PROMPTS)  # the n samples of a prompt differ


def test_batched_greedy_decoding_reproduces_the_teacher_forced_answers(engines):
    """The fixture verified (one forward pass per word) that greedy copies every held-out word
    and stops; the engine's batched KV-cache decoding, with rows finishing at different steps,
    must write exactly that."""
    out = engines["trained"].generate(
        [f"{w}>" for w in HELD_OUT], SamplingParams(max_new_tokens=6, temperature=0)
    )
    assert [(g[0].text, g[0].finished) for g in out] == [(w, True) for w in HELD_OUT]


def test_update_weights_turns_the_random_engine_into_the_trained_one(folders):
    greedy = SamplingParams(max_new_tokens=6, temperature=0)
    prompts = [f"{w}>" for w in HELD_OUT[:12]]
    trained_model, _ = load_model(folders["trained"], "float32")
    expected = HFEngine(folders["trained"]).generate(prompts, greedy)  # bf16, like the rollout
    engine = HFEngine(folders["random"])
    before = engine.generate(prompts, greedy)
    engine.update_weights(trained_model.state_dict())  # fp32 learner weights into a bf16 engine
    after = engine.generate(prompts, greedy)
    assert [g[0].text for g in before] != [g[0].text for g in expected]
    assert [g[0].token_ids for g in after] == [g[0].token_ids for g in expected]
    assert engine.model.dtype == torch.bfloat16
    with pytest.raises(KeyError, match="missing"):
        engine.update_weights({"lm_head.weight": trained_model.lm_head.weight})


@pytest.fixture(scope="module")
def masked(folders) -> dict[str, HFEngine]:
    return {name: HFEngine(path, dtype="float32", decode="mask") for name, path in folders.items()}


@pytest.mark.parametrize("temperature", [0.0, 1.0, 1.6])
def test_mask_and_drop_decoding_sample_the_same_tokens(engines, masked, temperature):
    """Dropping finished rows (the CPU loop) and masking them in a static cache (the GPU loop)
    sample the same tokens with one seed, rows finishing at different steps; the logprobs and
    entropies agree to float rounding."""
    params = SamplingParams(n=4, max_new_tokens=8, temperature=temperature, seed=5)
    prompts = [f"{w}>" for w in HELD_OUT[:6]] + PROMPTS
    drop = [c for g in engines["trained"].generate(prompts, params) for c in g]
    mask = [c for g in masked["trained"].generate(prompts, params) for c in g]
    assert engines["trained"].decode == "drop" and masked["trained"].decode == "mask"
    assert len({len(c.token_ids) for c in drop}) > 1  # some rows left the batch early
    assert [c.token_ids for c in mask] == [c.token_ids for c in drop]
    assert [(c.text, c.finished) for c in mask] == [(c.text, c.finished) for c in drop]
    for a, b in zip(mask, drop, strict=True):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs))
        torch.testing.assert_close(torch.tensor(a.entropies), torch.tensor(b.entropies))


@pytest.mark.parametrize("temperature", [0.0, 1.6])
def test_masked_logprobs_and_entropies_match_a_forward_pass(masked, folders, temperature):
    reference, _ = load_model(folders["trained"], "float32")
    params = SamplingParams(n=3, max_new_tokens=8, temperature=temperature, seed=3)
    for c in [c for g in masked["trained"].generate(PROMPTS, params) for c in g]:
        logprobs, entropies = recompute(reference, c, temperature)
        torch.testing.assert_close(torch.tensor(c.logprobs), logprobs, atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(torch.tensor(c.entropies), entropies, atol=2e-4, rtol=1e-4)


def test_a_compiled_masked_step_decodes_as_the_eager_one(folders, masked):
    """`compile` traces the decode step over the static cache (dynamo; the "eager" backend keeps
    the test fast: inductor's code generation is what a GPU run adds)."""
    params = SamplingParams(n=2, max_new_tokens=6, temperature=1.0, seed=1)
    compiled = HFEngine(folders["trained"], dtype="float32", compile="eager")
    assert compiled.decode == "mask"
    out = [c for _ in range(2) for g in compiled.generate(PROMPTS, params) for c in g]
    eager = [c for _ in range(2) for g in masked["trained"].generate(PROMPTS, params) for c in g]
    assert [c.token_ids for c in out] == [c.token_ids for c in eager]


def test_decode_choice_and_its_one_line_errors(tmp_path):
    from omnisched.errors import OmniError
    from omnisched.model import build_char_tokenizer, build_tiny_model, save_model
    from omnisched.rollout.hf import resolve_decode

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [resolve_decode("auto", d, False) for d in (cpu, cuda)] == ["drop", "mask"]
    assert resolve_decode("auto", cpu, True) == "mask"
    with pytest.raises(OmniError, match=r"^rollout.hf.decode: unknown 'fast'; known: auto, drop"):
        resolve_decode("fast", cpu, False)
    with pytest.raises(OmniError, match=r"^rollout.hf.compile: true needs rollout.hf.decode"):
        resolve_decode("drop", cpu, True)
    tok = build_char_tokenizer()
    model = build_tiny_model(TINY, tok, seed=0)
    model.config.use_sliding_window, model.config.sliding_window = True, 8
    model.config.max_window_layers = 1  # layer 1 of 2 attends within a window
    model.config.layer_types = ["full_attention", "sliding_attention"]
    folder = save_model(model, tok, tmp_path / "sliding")
    with pytest.raises(OmniError, match=r"^rollout.hf.decode: mask does not support the slid"):
        HFEngine(folder, dtype="float32", decode="mask")
    assert HFEngine(folder, dtype="float32").decode == "drop"  # the drop loop serves it
