"""The tiny policy: char tokenizer, model build/save/load, and the cached SFT warm start."""

import itertools
import json
import math
import random
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from omnisched.config.schema import ModelConfig, TinyModelConfig, WarmStartConfig
from omnisched.errors import DataError
from omnisched.model import (
    build_char_tokenizer,
    build_tiny_model,
    load_model,
    save_model,
    warm_start,
)
from omnisched.model.warm_start import (
    cache_key,
    encode_demos,
    pad_right,
    shuffled_batches,
    warmup_cosine,
)

TINY = TinyModelConfig(
    hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
    max_position_embeddings=64,
)  # fmt: skip
TEXT = "Q: 12 + 7 =?\nA:  19 .\n\tdef f(x):\n    return x*2  # don't {ok}~ "


def copy_task(seed: int = 0) -> tuple[list[tuple[str, str]], list[str]]:
    """Copy a 3-letter word: 180 training demos and 36 held-out words."""
    words = ["".join(t) for t in itertools.product("abcdef", repeat=3)]
    random.Random(seed).shuffle(words)
    return [(f"{w}>", w) for w in words[:180]], words[180:]


def sft_config(tmp_path, steps: int = 60) -> ModelConfig:
    ws = WarmStartConfig(steps=steps, batch_size=32, lr=3e-3, cache_dir=tmp_path / "cache")
    return ModelConfig(tiny=TINY, warm_start=ws, dtype="bfloat16")


def completion_loss(path, demos) -> float:
    """Mean NLL of completion + EOS tokens under the saved model (what the SFT minimises)."""
    model, tok = load_model(path, "float32")
    ids, labels, mask = pad_right(encode_demos(tok, demos, 64), tok.pad_token_id)
    with torch.no_grad():
        return float(model(input_ids=ids, attention_mask=mask, labels=labels).loss)


# ---- tokenizer ------------------------------------------------------------------------------
def test_tokenizer_round_trips_text_exactly_one_token_per_ascii_char():
    tok = build_char_tokenizer()
    ids = tok.encode(TEXT)
    assert len(ids) == len(TEXT)  # char level, no BOS / EOS added
    assert tok.decode(ids) == TEXT
    assert tok.decode(tok.encode("naïve “quotes”")) == "naïve “quotes”"  # bytes, not <unk>
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}) == 4


def test_tokenizer_reloads_identically_through_autotokenizer_in_a_model_folder(tmp_path):
    tok = build_char_tokenizer()
    save_model(build_tiny_model(TINY, tok, seed=0), tok, tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    again = AutoTokenizer.from_pretrained(tmp_path)  # what TRL and vLLM do
    assert len(again) == len(tok)
    assert again.encode(TEXT) == tok.encode(TEXT)
    assert again.decode(tok.encode(TEXT)) == TEXT
    assert (again.pad_token_id, again.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)
    with_eos = [*tok.encode("ab"), tok.eos_token_id]
    assert again.decode(with_eos, skip_special_tokens=True) == "ab"


# ---- model ----------------------------------------------------------------------------------
def test_tiny_model_matches_config_and_tokenizer():
    tok = build_char_tokenizer()
    model = build_tiny_model(TINY, tok, seed=0)
    cfg = model.config
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers) == (len(tok), 64, 2)
    assert cfg.num_key_value_heads == 2 and cfg.tie_word_embeddings
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    same = build_tiny_model(TINY, tok, seed=0)
    assert torch.equal(model.lm_head.weight, same.lm_head.weight)


def test_save_load_round_trip_gives_identical_logits(tmp_path):
    tok = build_char_tokenizer()
    model = build_tiny_model(TINY, tok, seed=1).eval()
    save_model(model, tok, tmp_path / "m")
    loaded, tok2 = load_model(tmp_path / "m", "float32")
    ids = torch.tensor([tok.encode(TEXT)])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert tok2.encode(TEXT) == ids[0].tolist()
    bf16, _ = load_model(tmp_path / "m", "bfloat16")
    assert bf16.dtype == torch.bfloat16


def test_saved_folder_loads_with_plain_auto_classes_as_trl_does(tmp_path):
    tok = build_char_tokenizer()
    save_model(build_tiny_model(TINY, tok, seed=0), tok, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    batch = again(["ab", "abcd"], return_tensors="pt", padding=True)
    assert batch["input_ids"][0, 0] == again.pad_token_id  # left padding for generation
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, 4 + 3)


def test_load_model_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(DataError, match="half"):
        load_model(tmp_path / "half")


# ---- warm start ------------------------------------------------------------------------------
def test_warmup_cosine_schedule_by_hand():
    f = warmup_cosine(100, warmup_frac=0.1, floor=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(100) == pytest.approx(0.1)


def test_shuffled_batches_cover_each_epoch_once_and_follow_the_seed():
    batches = shuffled_batches(10, 4, random.Random(0))
    first = [next(batches) for _ in range(5)]  # 20 indices = two epochs
    flat = [i for b in first for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != list(range(10))
    again = shuffled_batches(10, 4, random.Random(0))
    assert [next(again) for _ in range(5)] == first


def test_encode_demos_puts_loss_on_completion_and_eos_only():
    tok = build_char_tokenizer()
    [(ids, labels)] = encode_demos(tok, [("ab>", "ab")], max_len=64)
    assert ids == [*tok.encode("ab>ab"), tok.eos_token_id]
    assert labels == [-100] * 3 + [*tok.encode("ab"), tok.eos_token_id]


def test_cache_key_tracks_what_changes_the_model_but_not_the_cache_dir(tmp_path):
    demos, _ = copy_task()
    cfg = sft_config(tmp_path)
    key = cache_key(cfg, demos, seed=0)
    moved = cfg.model_copy(
        update={"warm_start": cfg.warm_start.model_copy(update={"cache_dir": tmp_path})}
    )
    assert cache_key(moved, demos, seed=0) == key
    assert cache_key(cfg, demos, seed=1) != key
    assert cache_key(cfg, demos[:-1], seed=0) != key
    assert cache_key(sft_config(tmp_path, steps=61), demos, seed=0) != key


def test_warm_start_learns_the_toy_task_and_second_call_hits_the_cache(tmp_path):
    demos, held_out = copy_task()
    cfg = sft_config(tmp_path)
    seen: list[tuple[int, int, float]] = []
    t0 = time.perf_counter()
    path = warm_start(cfg, demos, seed=0, threads=2, progress=lambda *a: seen.append(a))
    trained_s = time.perf_counter() - t0
    assert [s for s, _, _ in seen] == list(range(1, 61)) and seen[-1][1] == 60
    untrained = ModelConfig(tiny=TINY, warm_start=cfg.warm_start.model_copy(update={"steps": 0}))
    random_path = warm_start(untrained, demos, seed=0, threads=2)
    held = [(f"{w}>", w) for w in held_out]
    assert completion_loss(path, held) < 0.25 * completion_loss(random_path, held)

    t0 = time.perf_counter()
    again = warm_start(cfg, demos, seed=0, threads=2, progress=lambda *a: seen.append(a))
    assert again == path and len(seen) == 60  # no training the second time
    assert time.perf_counter() - t0 < trained_s / 5
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_warm_start_returns_a_given_model_path_untouched(tmp_path):
    tok = build_char_tokenizer()
    save_model(build_tiny_model(TINY, tok, seed=0), tok, tmp_path / "mine")
    cfg = ModelConfig(path=str(tmp_path / "mine"), warm_start=WarmStartConfig(cache_dir=tmp_path))
    assert warm_start(cfg, copy_task()[0], seed=0, threads=1) == tmp_path / "mine"
    with pytest.raises(DataError, match="missing"):
        warm_start(ModelConfig(path=str(tmp_path / "missing")), [], seed=0, threads=1)


def test_sft_loss_weighs_every_demo_equally_and_micro_batches_sum_to_it():
    """Length-sorted micro-batches give exactly the whole mixed batch's sequence-mean loss,
    which is the mean over demos of each demo's own token-mean loss."""
    from omnisched.model.warm_start import (
        encode_demos,
        length_sorted_chunks,
        pad_right,
        sequence_mean_loss,
    )

    tok = build_char_tokenizer()
    cfg = TinyModelConfig(
        hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64
    )
    model = build_tiny_model(cfg, tok, 0)
    demos = [
        ("Q: 1+1=?\nA: ", "2"),
        ("Write a line.\n", "the sea sings."),
        ("abc", "defgh"),
        ("p", "q"),
        ("longer prompt here ", "x"),
    ]
    data = encode_demos(tok, demos, 256)
    with torch.no_grad():
        per_demo = [
            model(input_ids=torch.tensor([ids]), labels=torch.tensor([lab])).loss
            for ids, lab in data
        ]
        ids, labels, mask = pad_right(data, tok.pad_token_id)
        logits = model(input_ids=ids, attention_mask=mask).logits
        full = sequence_mean_loss(logits, labels, batch_size=len(data))
        parts = 0.0
        for chunk in length_sorted_chunks(data, 2):
            i, lab, m = pad_right(chunk, tok.pad_token_id)
            parts += sequence_mean_loss(model(input_ids=i, attention_mask=m).logits, lab, len(data))
    assert len(length_sorted_chunks(data, 2)) == 3
    assert float(full) == pytest.approx(float(sum(per_demo) / len(per_demo)), rel=1e-4)
    assert float(parts) == pytest.approx(float(full), rel=1e-4)
