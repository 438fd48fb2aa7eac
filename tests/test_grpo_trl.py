"""The learner's GRPO step against TRL's own `GRPOTrainer._compute_loss`, on one batch.

TRL 1.16 is the reference implementation: a real `GRPOTrainer` is built around the same tiny
model (fp32), its loss and gradients are computed from the batch as TRL's generation step lays
it out (left-padded prompts, every completion, advantages of every group, reference logprobs from
its own reference model at its sampling temperature), and compared with ours, where the batch
goes through `train_batch` (tied groups left out, the whole batch's normalisers kept) and the
learner's micro-batched step. The batch has ratios != 1 (stale sampler logprobs), a reference
that differs from the policy, a tied group, ragged completion lengths and micro-batches of 3.
"""

from __future__ import annotations

import copy
import itertools
import random
from pathlib import Path

import pytest
import torch

trl = pytest.importorskip("trl")

from omnisched.config.schema import LearnerConfig, TinyModelConfig  # noqa: E402
from omnisched.learner.base import ScoredGroup  # noqa: E402
from omnisched.learner.batch import train_batch  # noqa: E402
from omnisched.learner.torch_learner import TorchLearner  # noqa: E402
from omnisched.model import build_char_tokenizer, build_tiny_model, load_model, save_model  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:TRL currently supports vLLM")
G, MAX_LEN = 4, 7
OURS_TO_TRL = {"token-mean": "dapo", "sequence-mean": "grpo", "dr-grpo": "dr_grpo"}
# (kl_coef, kl_bias_correction): no KL, GRPO's k3, TRL 1.16's importance-corrected k3
KL = [(0.0, False), (0.05, False), (0.05, True)]
TINY = TinyModelConfig(
    hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64,
    max_position_embeddings=64,
)  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    tok = build_char_tokenizer()
    return save_model(build_tiny_model(TINY, tok, seed=0), tok, tmp_path_factory.mktemp("m"))


def make_groups(tok) -> list[ScoredGroup]:
    """4 prompts x G completions of ragged lengths; group 2's rewards all tie."""
    rng = random.Random(0)
    letters = "abcdefgh"
    groups = []
    for i in range(4):
        prompt = tok.encode("".join(rng.choice(letters) for _ in range(3 + i)) + ">")
        comps = [
            tok.encode("".join(rng.choice(letters) for _ in range(rng.randint(1, MAX_LEN))))
            for _ in range(G)
        ]
        rewards = [0.5] * G if i == 2 else [rng.random() for _ in range(G)]
        groups.append(ScoredGroup(prompt, comps, rewards, group_id=f"g{i}"))
    return groups


def with_stale_logprobs(groups: list[ScoredGroup], seed: int = 1) -> list[ScoredGroup]:
    """Sampler logprobs that differ from the policy's: ratios spread around 1, some clipped."""
    g = torch.Generator().manual_seed(seed)
    for grp in groups:
        grp.logprobs = [
            (-3.0 + 0.6 * torch.randn(len(c), generator=g)).tolist() for c in grp.completion_ids
        ]
    return groups


def perturbed(model, seed: int = 2):
    """A reference that differs from the policy."""
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return ref


def trl_trainer(folder: Path, temperature: float, tmp_path: Path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=4 * G,
        gradient_accumulation_steps=1,
        num_generations=G,
        max_completion_length=MAX_LEN,
        temperature=temperature,
        beta=0.05,  # TRL builds its reference model only when beta > 0
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        model_init_kwargs={"dtype": "float32", "attn_implementation": "eager"},
    )
    trainer = GRPOTrainer(
        model=str(folder),
        reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
        args=args,
        train_dataset=Dataset.from_list([{"prompt": "a"}] * 4),
    )
    trainer.current_gradient_accumulation_steps = 1  # what `Trainer.train` sets for GAS 1
    return trainer


def trl_inputs(trainer, groups, adv_eps: float, old: bool = True) -> dict:
    """The batch as TRL's generation step hands it to `_compute_loss` (with the groups' sampler
    logprobs as `old_per_token_logps` when `old`)."""
    from trl.trainer.utils import nanstd

    pad = trainer.processing_class.pad_token_id
    prompts = [g.prompt_ids for g in groups for _ in g.completion_ids]
    comps = [c for g in groups for c in g.completion_ids]
    width_p, width_c = max(map(len, prompts)), max(map(len, comps))
    prompt_ids = torch.tensor([[pad] * (width_p - len(p)) + p for p in prompts])  # left-padded
    prompt_mask = torch.tensor([[0] * (width_p - len(p)) + [1] * len(p) for p in prompts])
    completion_ids = torch.tensor([c + [pad] * (width_c - len(c)) for c in comps])
    completion_mask = torch.tensor([[1] * len(c) + [0] * (width_c - len(c)) for c in comps])
    old_logps = None
    if old:
        flat = [lp for g in groups for lp in g.logprobs]
        old_logps = torch.tensor([o + [0.0] * (width_c - len(o)) for o in flat])
    rewards = torch.tensor([g.rewards for g in groups])  # TRL: (r - mean) / (nanstd + 1e-4)
    advantages = (rewards - rewards.mean(1, keepdim=True)) / (
        nanstd(rewards, dim=1)[:, None] + adv_eps
    )
    ids = torch.cat([prompt_ids, completion_ids], 1)
    mask = torch.cat([prompt_mask, completion_mask], 1)
    with torch.no_grad():
        ref_logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.ref_model, ids, mask, width_c
        )
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": advantages.view(-1),
        "old_per_token_logps": old_logps,
        "ref_per_token_logps": ref_logps,
        "num_items_in_batch": completion_mask.sum(),
    }


def configure(trainer, cfg: LearnerConfig) -> None:
    """TRL's options that `_compute_loss` reads at call time, set to `cfg`'s equivalents."""
    trainer.loss_type = OURS_TO_TRL[cfg.loss_agg]
    trainer.beta = cfg.kl_coef
    trainer.args.use_bias_correction_kl = cfg.kl_bias_correction  # TRL 1.16 defaults to True
    trainer.importance_sampling_level = cfg.importance_sampling


def trl_loss_and_grads(trainer, inputs, cfg: LearnerConfig) -> tuple[float, dict]:
    configure(trainer, cfg)
    model = trainer.model
    model.train()
    model.zero_grad(set_to_none=True)
    loss = trainer._compute_loss(model, inputs)
    loss.backward()
    return float(loss.detach()), grads_of(model)


def our_loss_and_grads(learner: TorchLearner, groups) -> tuple[float, dict]:
    batch = train_batch(groups, learner.cfg)
    metrics = learner.compute_gradients(batch.samples, batch.num_seqs, batch.num_tokens)
    return metrics["loss"], grads_of(learner.model)


def grads_of(model) -> dict:
    return {
        n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
        for n, p in model.named_parameters()
    }


def relative_gap(ours: dict, theirs: dict) -> float:
    num = sum(float((ours[n] - theirs[n]).pow(2).sum()) for n in theirs)
    den = sum(float(theirs[n].pow(2).sum()) for n in theirs)
    return (num / den) ** 0.5


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_loss_and_gradients_equal_trl_for_every_variant(folder, temperature, tmp_path):
    torch.manual_seed(0)
    trainer = trl_trainer(folder, temperature, tmp_path)
    tok = trainer.processing_class
    groups = with_stale_logprobs(make_groups(tok))
    ref = perturbed(load_model(folder, "float32", "eager")[0])
    trainer.ref_model.load_state_dict(ref.state_dict())
    checked = []
    for loss_agg, (kl_coef, bias), level in itertools.product(
        OURS_TO_TRL, KL, ["token", "sequence"]
    ):
        cfg = LearnerConfig(
            loss_agg=loss_agg,
            kl_coef=kl_coef,
            kl_bias_correction=bias,
            importance_sampling=level,
            micro_batch_size=3,
            bf16=False,
        )
        inputs = trl_inputs(trainer, groups, cfg.adv_eps)
        trl_loss, trl_grads = trl_loss_and_grads(trainer, inputs, cfg)
        policy, _ = load_model(folder, "float32", "eager")  # TRL patched its own copy's head
        learner = TorchLearner(
            policy, cfg, tok.pad_token_id, ref_model=copy.deepcopy(ref),
            max_completion_len=MAX_LEN, temperature=temperature,
        )  # fmt: skip
        loss, grads = our_loss_and_grads(learner, groups)
        label = f"{loss_agg} kl={kl_coef} bias={bias} {level} T={temperature}"
        assert loss == pytest.approx(trl_loss, rel=1e-5, abs=1e-8), label
        assert relative_gap(grads, trl_grads) < 1e-5, label
        checked.append(label)
    assert len(checked) == 18


def test_two_ppo_epochs_equal_trl_num_iterations_2(folder, tmp_path):
    """TRL with num_iterations=2 (steps_per_generation 1, one accumulation step) computes the
    batch's `old_per_token_logps` with the policy before any update, then takes two optimizer
    steps on the same batch. Our `train_step` with ppo_epochs=2 is observed at each optimizer
    step (weights and gradient); TRL's loss at those same weights, against the pre-update
    logprobs, must give the same gradient: ratio 1 in the first step, not in the second.
    (Weights after AdamW are not compared: its first steps move every coordinate by about
    lr * sign(g), so float noise in near-zero gradient entries would dominate.)"""
    temperature = 0.7
    trainer = trl_trainer(folder, temperature, tmp_path)
    tok = trainer.processing_class
    groups = make_groups(tok)  # no sampler logprobs: epoch 2 is off-policy w.r.t. the policy
    ref = perturbed(load_model(folder, "float32", "eager")[0])
    trainer.ref_model.load_state_dict(ref.state_dict())
    cfg = LearnerConfig(
        loss_agg="token-mean", kl_coef=0.05, ppo_epochs=2, lr=3e-2, max_grad_norm=1e6,
        micro_batch_size=3, bf16=False,
    )  # fmt: skip
    configure(trainer, cfg)
    inputs = trl_inputs(trainer, groups, cfg.adv_eps, old=False)
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    width = inputs["completion_ids"].shape[1]
    with torch.no_grad():  # TRL: at generation time, before the batch's first update
        inputs["old_per_token_logps"], _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, mask, width
        )

    policy, _ = load_model(folder, "float32", "eager")
    learner = TorchLearner(
        policy, cfg, tok.pad_token_id, ref_model=copy.deepcopy(ref), max_completion_len=MAX_LEN,
        temperature=temperature,
    )  # fmt: skip
    seen: list[tuple[dict, dict]] = []
    step = learner.optimizer.step

    def observed_step(*args, **kwargs):
        weights = {n: p.detach().clone() for n, p in policy.named_parameters()}
        seen.append((weights, grads_of(policy)))
        return step(*args, **kwargs)

    learner.optimizer.step = observed_step
    batch = train_batch(groups, cfg)
    metrics = learner.train_step(batch.samples, batch.num_seqs, batch.num_tokens)
    assert len(seen) == 2 and metrics["ratio"] != pytest.approx(1.0, abs=1e-4)
    model = trainer.model
    for weights, grads in seen:
        model.load_state_dict(weights, strict=False)
        model.train()
        model.zero_grad(set_to_none=True)
        trainer._compute_loss(model, inputs).backward()
        assert relative_gap(grads, grads_of(model)) < 1e-5
