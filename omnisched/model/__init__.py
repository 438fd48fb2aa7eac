"""The policy model: char-level tokenizer, tiny Qwen2 builder, loading, cached SFT warm start."""

from omnisched.model.build import build_tiny_model, load_model, save_model
from omnisched.model.tokenizer import build_char_tokenizer
from omnisched.model.warm_start import warm_start

__all__ = ["build_char_tokenizer", "build_tiny_model", "load_model", "save_model", "warm_start"]
