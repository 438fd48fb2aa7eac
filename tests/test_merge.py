"""Model merging maths on hand-made tensors, against hand-computed results."""

import pytest
import torch

from omnisched.repro.merge import (
    apply_task_vector,
    disjoint_mean,
    elect_sign,
    task_arithmetic,
    task_vector,
    ties_merge,
    trim_top_k,
)


def t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


def test_task_vector_is_finetuned_minus_base_and_skips_integer_tensors():
    base = {"w": t(1, 2, 3), "steps": torch.tensor([5])}
    ft = {"w": t(2, 2, 1), "steps": torch.tensor([7])}
    tau = task_vector(ft, base)
    assert set(tau) == {"w"}
    assert torch.equal(tau["w"], t(1, 0, -2))


def test_task_arithmetic_adds_scaled_sum_of_task_vectors():
    base = {"w": t(1, 2, 3), "steps": torch.tensor([5])}
    ft1 = {"w": t(2, 2, 1), "steps": torch.tensor([7])}  # tau1 = [1, 0, -2]
    ft2 = {"w": t(1, 4, 3), "steps": torch.tensor([9])}  # tau2 = [0, 2, 0]
    merged = task_arithmetic(base, [ft1, ft2], scale=0.5)
    assert torch.allclose(merged["w"], t(1.5, 3.0, 2.0))  # base + 0.5 * [1, 2, -2]
    assert torch.equal(merged["steps"], torch.tensor([5]))  # non-float: the base's
    one = task_arithmetic(base, [ft1], scale=1.0)
    assert torch.allclose(one["w"], ft1["w"])  # one task vector at scale 1 gives the expert back


def test_apply_task_vector_keeps_the_base_dtype():
    base = {"w": t(1, 2).to(torch.bfloat16)}
    out = apply_task_vector(base, {"w": t(0.5, -1)}, scale=2.0)
    assert out["w"].dtype == torch.bfloat16
    assert torch.equal(out["w"].float(), t(2, 0))


def test_trim_keeps_top_k_magnitudes_over_the_whole_task_vector():
    tau = {"a": t(0.1, -3.0), "b": t(2.0, 0.5, -0.2)}
    kept = trim_top_k(tau, density=0.4)  # ceil(0.4 * 5) = 2 entries: -3.0 and 2.0
    assert torch.equal(kept["a"], t(0, -3.0))
    assert torch.equal(kept["b"], t(2.0, 0, 0))
    kept = trim_top_k(tau, density=0.5)  # ceil(2.5) = 3 entries: also 0.5
    assert torch.equal(kept["b"], t(2.0, 0.5, 0))
    assert torch.equal(trim_top_k(tau, 1.0)["a"], tau["a"])


def test_trim_breaks_magnitude_ties_by_position():
    kept = trim_top_k({"w": t(1, -1, 1)}, density=0.34)  # ceil(1.02) = 2 of three equal
    assert torch.equal(kept["w"], t(1, -1, 0))


def test_elect_sign_by_summed_values_and_disjoint_mean_of_agreeing_entries():
    taus = [{"w": t(1, -2, 0.5)}, {"w": t(-3, 1, 0.5)}, {"w": t(1, 0.5, 0)}]
    signs = elect_sign(taus)  # sums [-1, -0.5, 1]
    assert torch.equal(signs["w"], t(-1, -1, 1))
    merged = disjoint_mean(taus, signs)
    # p0: only -3 agrees; p1: only -2 agrees; p2: 0.5 and 0.5 agree, the zero is not counted
    assert torch.allclose(merged["w"], t(-3, -2, 0.5))


def test_ties_merge_end_to_end_resolves_sign_conflicts():
    base = {"w": t(1, 1, 1, 1)}
    ft1 = {"w": base["w"] + t(4, -1, 0.2, 0)}
    ft2 = {"w": base["w"] + t(-2, -3, 0.1, 0)}
    merged = ties_merge(base, [ft1, ft2], density=0.5, scale=1.0)
    # trimmed: [4, -1, 0, 0] and [-2, -3, 0, 0]; signs [+, -, 0, 0]; means [4, -2, 0, 0]
    assert torch.allclose(merged["w"], t(5, -1, 1, 1))
    ta = task_arithmetic(base, [ft1, ft2], scale=1.0)  # interference: 4 - 2 = 2
    assert torch.allclose(ta["w"], t(3, -3, 1.3, 1))


def test_merging_rejects_mismatched_state_dicts_and_bad_density():
    base = {"w": t(1, 2)}
    with pytest.raises(ValueError, match="keys"):
        task_arithmetic(base, [{"v": t(1, 2)}])
    with pytest.raises(ValueError, match="shape"):
        ties_merge(base, [{"w": t(1, 2, 3)}])
    with pytest.raises(ValueError, match="density"):
        trim_top_k({"w": t(1, 2)}, 0.0)


def test_write_merge_saves_an_hf_folder_with_tied_embeddings_merged_once(tmp_path):
    from omnisched.config.schema import TinyModelConfig
    from omnisched.model import build_char_tokenizer, build_tiny_model, load_model, save_model
    from omnisched.repro.runner import ReproOptions, write_merge

    tok = build_char_tokenizer()
    cfg = TinyModelConfig(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                          intermediate_size=32)  # fmt: skip
    base = build_tiny_model(cfg, tok, seed=0)
    save_model(base, tok, tmp_path / "base")
    deltas = []
    for i in range(2):
        expert = build_tiny_model(cfg, tok, seed=0)
        delta = {k: 0.01 * (i + 1) * torch.ones_like(v) for k, v in expert.state_dict().items()}
        with torch.no_grad():
            for name, p in expert.named_parameters():  # tied weights: one parameter
                p.add_(delta[name])
        save_model(expert, tok, tmp_path / f"e{i}")
        deltas.append(delta)
    out = write_merge(
        tmp_path / "base",
        [tmp_path / "e0", tmp_path / "e1"],
        tmp_path / "ta",
        "ta",
        ReproOptions(merge_scale=1.0),
    )
    merged, _ = load_model(out)
    want = base.state_dict()
    got = merged.state_dict()
    emb = "model.embed_tokens.weight"
    assert torch.allclose(got[emb], want[emb] + 0.03, atol=1e-6)  # 0.01 + 0.02, not doubled
    assert torch.equal(got["lm_head.weight"], got[emb])
    assert (tmp_path / "ta" / "tokenizer.json").exists()  # loadable by rollout engines as is
