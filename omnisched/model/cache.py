"""Where the warm-started model lives, decided without torch.

The cache key hashes everything that changes the result (model shape, SFT settings, seed, the
demonstrations, a format version), so a second run of the same recipe skips training. The Ray
driver calls `resolve` to learn whether SFT must run at all; the training itself runs in a
short-lived worker process whose memory goes back to the OS when it exits
(`omnisched.orchestration.sft`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from omnisched.config.schema import ModelConfig
from omnisched.errors import DataError

FORMAT_VERSION = 5  # bump when the tokenizer, model builder or SFT recipe changes
Demo = tuple[str, str]


def cache_key(model_cfg: ModelConfig, demos: Sequence[Demo], seed: int) -> str:
    """Hash of (format version, tiny config, warm-start config minus cache_dir, seed, demos, and
    the SFT's precision where it is not bfloat16)."""
    sft_cfg = model_cfg.warm_start.model_dump(mode="json", exclude={"cache_dir"})
    tiny = model_cfg.tiny.model_dump(
        exclude={"tokenizer"} if model_cfg.tiny.tokenizer == "char" else None
    )
    meta = {"v": FORMAT_VERSION, "tiny": tiny, "sft": sft_cfg, "seed": seed}
    if model_cfg.dtype != "bfloat16":  # autocast precision (older keys: bfloat16 always)
        precision = model_cfg.dtype
        if precision == "auto":
            from omnisched.model.precision import cpu_has_native_bf16

            precision = "auto-bf16" if cpu_has_native_bf16() else "auto-fp32"
        meta["precision"] = precision
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for prompt, completion in demos:
        h.update(json.dumps([prompt, completion]).encode())
    return h.hexdigest()[:20]


def given_folder(model_cfg: ModelConfig) -> Path | None:
    """`model.path`, which must be an HF folder (checked before a run starts, and here for
    callers that skip that check); None for the tiny model."""
    if model_cfg.path is None:
        return None
    path = Path(model_cfg.path).expanduser()
    if not (path / "config.json").is_file():
        raise DataError(f"model.path {path} is not an HF model folder (no config.json)")
    return path


def resolve(model_cfg: ModelConfig, demos: Sequence[Demo], seed: int) -> tuple[Path, bool]:
    """(model folder, whether it is ready): `model.path` as `given_folder` returns it, else the
    tiny model's cache folder, ready when an earlier run wrote it."""
    path = given_folder(model_cfg)
    if path is not None:
        return path, True
    cache = Path(model_cfg.warm_start.cache_dir).expanduser()
    target = cache / f"tiny-{cache_key(model_cfg, demos, seed)}"
    return target, (target / "config.json").is_file()
