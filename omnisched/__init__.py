"""omnisched: multi-domain GRPO post-training with a transfer- and entropy-aware scheduler."""

__version__ = "0.1.0"
