"""The policy model: char and BPE chat tokenizers, tiny Qwen2 builders, loading, SFT warm start.

Exports load lazily: the Ray driver resolves the warm-start cache (`omnisched.model.cache`)
without importing torch, which stays in the workers that hold a model.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "build_bpe_tokenizer": "omnisched.model.chat_model",
    "build_char_tokenizer": "omnisched.model.tokenizer",
    "build_chat_model": "omnisched.model.chat_model",
    "build_tiny_model": "omnisched.model.build",
    "load_model": "omnisched.model.build",
    "save_model": "omnisched.model.build",
    "warm_start": "omnisched.model.warm_start",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'omnisched.model' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    # importing omnisched.model.warm_start binds the *submodule* to the package attribute of the
    # same name; pin the exported function over it so later imports see the function
    globals()[name] = value
    return value
