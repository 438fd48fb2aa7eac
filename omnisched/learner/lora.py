"""LoRA through `peft` (`learner.lora`): adapters on a frozen base, for both learners.

The policy is a `PeftModel`; only its adapters train. What leaves the learner is the merged
policy under the base model's own parameter names, W' = W + B @ A * alpha / r (peft's
`get_delta_weight`), so every weight-sync path and every engine works unchanged. The KL
reference is the same model with its adapters disabled: no second copy of the weights. A
checkpoint is the merged HF folder with the adapters beside it in `adapter/`; a learner built
from such a folder loads the base named in the adapters' config and the adapters themselves,
so training resumes exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from omnisched.config.lora import ALL_LINEAR, LoraConfig
from omnisched.config.schema import LearnerConfig, TinyModelConfig
from omnisched.errors import ConfigError, OmniError
from omnisched.learner.step import frozen_reference

if TYPE_CHECKING:  # peft takes seconds to import: only runs with `learner.lora` load it
    from peft import PeftModel

ADAPTER_DIR = "adapter"  # inside a checkpoint: peft's adapter_config.json + adapter_model
Gather = Callable[[Iterable[nn.Parameter]], contextlib.AbstractContextManager[Any]]


def _whole(params: Iterable[nn.Parameter]) -> contextlib.AbstractContextManager[Any]:
    """Parameters that are not sharded need no gathering (ZeRO-3 passes its own `Gather`)."""
    return contextlib.nullcontext()


def adaptable_names(model: nn.Module) -> list[str]:
    """The distinct last names of the modules LoRA can adapt (linear, embedding, conv layers)."""
    kinds = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d)
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, kinds)})


def check_targets(model: nn.Module, cfg: LoraConfig) -> None:
    """Every `target_modules` entry must match a module (peft's rule: the whole name, or its
    suffix after a dot; a single string is a regular expression over whole names)."""
    if cfg.target_modules == ALL_LINEAR:
        return
    names = [n for n, _ in model.named_modules() if n]
    targets = cfg.target_modules
    if isinstance(targets, str):
        try:
            re.compile(targets)
        except re.error as exc:
            raise ConfigError(f"learner.lora.target_modules: {targets!r}: {exc}") from None
        unmatched = [] if any(re.fullmatch(targets, n) for n in names) else [targets]
    else:
        unmatched = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if unmatched:
        raise ConfigError(
            f"learner.lora.target_modules: {unmatched} match no module of the model; "
            f"its adaptable modules: {', '.join(adaptable_names(model))} (or '{ALL_LINEAR}')"
        )


def target_problem(model: str | Path | TinyModelConfig, cfg: LoraConfig) -> str | None:
    """What `check_targets` says of the model in folder `model`, or of the tiny model `model`
    configures (built on the meta device: no weights are read or made), or None when every
    target matches."""
    with torch.device("meta"):
        tree = _module_tree(model)
    try:
        check_targets(tree, cfg)
    except ConfigError as exc:
        return str(exc)
    return None


def _module_tree(model: str | Path | TinyModelConfig) -> nn.Module:
    """The model whose module names LoRA targets: an HF folder's, or the tiny model's (whose
    names do not depend on its tokenizer: the char one stands in for either)."""
    if isinstance(model, TinyModelConfig):
        from omnisched.model.build import build_tiny_model
        from omnisched.model.tokenizer import build_char_tokenizer

        with torch.random.fork_rng(devices=[]):  # it seeds torch: the caller's RNG stays
            return build_tiny_model(model, build_char_tokenizer(), seed=0)
    from transformers import AutoConfig, AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(model)))


def attach(model: nn.Module, cfg: LoraConfig) -> PeftModel:
    """`model` with fresh adapters (B = 0: the policy starts as the base), only they trainable;
    a `PeftModel` already (`load_adapters`) is returned as it is."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        return model
    check_targets(model, cfg)
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


class BaseReference(nn.Module):
    """The KL reference: the policy's forward with its adapters disabled, in eval mode. It holds
    the policy outside its own module tree, so freezing or moving it touches nothing."""

    def __init__(self, policy: PeftModel) -> None:
        super().__init__()
        self._policy = (policy,)

    def forward(self, **inputs: Any) -> Any:
        policy = self._policy[0]
        was_training = policy.training
        policy.eval()
        try:
            with policy.disable_adapter():
                return policy(**inputs)
        finally:
            policy.train(was_training)


def with_reference(
    model: nn.Module, ref_model: nn.Module | None, cfg: LearnerConfig
) -> tuple[nn.Module, nn.Module | None]:
    """The policy and KL reference a learner trains with: as `frozen_reference` gives them, or
    with `cfg.lora` the adapted policy and (unless a reference is given) its base."""
    if cfg.lora is None:
        return model, frozen_reference(model, ref_model, cfg)
    policy = attach(model, cfg.lora)
    if ref_model is None and cfg.kl_coef > 0:
        ref_model = BaseReference(policy)
    return policy, frozen_reference(policy, ref_model, cfg)


def base_state(model: nn.Module) -> dict[str, Tensor]:
    """The state dict under the base model's own names (a peft model's adapters left out, its
    adapted weights unmerged); any other model's own state dict."""
    peft = sys.modules.get("peft")  # not imported: no peft model exists
    if peft is None or not isinstance(model, peft.PeftModel):
        return model.state_dict()
    state = model.get_base_model().state_dict(keep_vars=True)
    return {k.replace(".base_layer.", "."): v for k, v in state.items() if ".lora_" not in k}


def merged_state_dict(
    model: PeftModel, gather: Gather = _whole, dtypes: dict[str, torch.dtype] | None = None
) -> dict[str, Tensor]:
    """The base model's state dict under its own names, every adapted weight merged (W plus
    peft's delta: what `merge_and_unload` leaves), as a detached CPU snapshot (in `dtypes`, by
    name, where given); `model` is not changed. Tied weights stay one tensor under both names."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    adapter = model.active_adapter
    layers = {f"{n}.base_layer": m for n, m in base.named_modules() if isinstance(m, LoraLayer)}
    out: dict[str, Tensor] = {}
    copies: dict[int, Tensor] = {}
    for key, tensor in base.state_dict(keep_vars=True).items():
        if ".lora_" in key:
            continue
        name = key.replace(".base_layer.", ".")
        if id(tensor) not in copies:
            owner, _, leaf = key.rpartition(".")
            layer = layers.get(owner) if leaf == "weight" else None
            params = {id(p): p for p in [tensor, *(layer.parameters() if layer else [])]}
            with gather(list(params.values())), torch.no_grad():
                weight = tensor.detach()
                if layer is not None:
                    weight = weight + layer.get_delta_weight(adapter).to(weight.dtype)
                dtype = weight.dtype if dtypes is None else dtypes[name]
                copies[id(tensor)] = weight.to("cpu", dtype, copy=True)
        out[name] = copies[id(tensor)]
    return out


def adapter_weights(
    model: PeftModel, gather: Gather = _whole, dtype: torch.dtype | None = None
) -> dict[str, Tensor]:
    """The adapters' weights under the policy's parameter names (detached CPU copies)."""
    named = [(n, p) for n, p in model.named_parameters() if ".lora_" in n]
    with gather([p for _, p in named]):
        return {n: p.detach().to("cpu", dtype or p.dtype, copy=True) for n, p in named}


def save(
    model: PeftModel, path: Path | str, merged: dict[str, Tensor], adapters: dict[str, Tensor]
) -> None:
    """`path`: an HF folder of the `merged` weights (transformers and the engines load it), and
    `path/adapter`: peft's folder of the `adapters`, whose config names the base model's folder."""
    path = Path(path)
    model.get_base_model().save_pretrained(str(path), state_dict=merged)
    peft_cfg = model.peft_config[model.active_adapter]
    base = peft_cfg.base_model_name_or_path
    if base and Path(base).is_dir():  # found again from any working directory
        peft_cfg.base_model_name_or_path = str(Path(base).resolve())
    model.save_pretrained(str(path / ADAPTER_DIR), state_dict=adapters)


def checkpoint_parts(path: str | Path) -> tuple[str, Path | None]:
    """(the folder to build the base model from, the adapter folder) of a LoRA checkpoint;
    any other folder is its own base with no adapters."""
    config = Path(path) / ADAPTER_DIR / "adapter_config.json"
    if not config.is_file():
        return str(path), None
    base = json.loads(config.read_text()).get("base_model_name_or_path")
    if not base or not Path(base).is_dir():
        raise OmniError(
            f"resume: {config}: base_model_name_or_path {base!r} is no model folder here; the "
            "adapters need the base model they were trained on"
        )
    return base, config.parent


def load_adapters(model: nn.Module, adapters: Path) -> PeftModel:
    """`model` (the base) with the saved, trainable adapters of `adapters`."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapters), is_trainable=True)
