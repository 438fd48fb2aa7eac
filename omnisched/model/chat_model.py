"""A tiny instruct-style model folder built locally, shaped like a real one (Qwen2.5-Instruct):
a byte-level BPE tokenizer trained on procedural text, a chat template with `<|im_start|>` /
`<|im_end|>`, EOS `<|im_end|>`, and `generation_config.json` listing two EOS ids as real chat
models do. For users who want a real-tokenizer stand-in offline, and for the tests.

The tokenizer is saved as Qwen2's, for the reason `omnisched.model.tokenizer` gives: a qwen2
folder's tokenizer is reloaded as `Qwen2Tokenizer` from its vocabulary and merges whatever
tokenizer.json says, so a tokenizer built any other way could change on reload.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from omnisched.config.schema import TinyModelConfig

if TYPE_CHECKING:  # torch-free at import: the driver reads CHAT_TEMPLATE for the tiny model
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

END_OF_TEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHAT_TEMPLATE = (  # Qwen2.5's layout without its tool-calling branches
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
WORDS = ("the", "a", "of", "to", "and", "is", "what", "how", "many", "plus", "minus", "times",
         "answer", "question", "write", "code")  # fmt: skip


def procedural_text(n: int = 2000, seed: int = 0) -> list[str]:
    """Lines of arithmetic, words and code to train the BPE merges on (no data set needed)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        a, b = rng.randrange(1000), rng.randrange(1000)
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 9)))
        lines.append(f"What is {a} + {b}? {words}. Answer: {a + b}")
        lines.append(f"def f(x):\n    return {a}*x+{b}\n")
    return lines


def build_bpe_tokenizer(
    texts: Iterable[str] | None = None, vocab_size: int = 512
) -> PreTrainedTokenizerFast:
    """Byte-level BPE (every byte has a token, so any text round-trips) with Qwen's specials,
    EOS `<|im_end|>`, padding `<|endoftext|>` and the chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    specials = [END_OF_TEXT, IM_START, IM_END]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts if texts is not None else procedural_text(), trainer)
    model = bpe.model
    vocab = {t: i for t, i in bpe.get_vocab().items() if t not in specials}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in _merges(model)]
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        unk_token=None,
        bos_token=None,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [IM_START]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _merges(model) -> list:
    """The trained merges, in rank order (the tokenizers API keeps them in its JSON only)."""
    import json

    from tokenizers import Tokenizer

    data = json.loads(Tokenizer(model).to_str())
    return data["model"]["merges"]


def build_chat_model(
    path: str | Path, tiny: TinyModelConfig | None = None, seed: int = 0, vocab_size: int = 512
) -> Path:
    """Write a randomly initialised tiny Qwen2 model with the BPE chat tokenizer to `path`;
    its generation config stops on `<|im_end|>` or `<|endoftext|>`."""
    from omnisched.model.build import build_tiny_model, save_model

    tokenizer = build_bpe_tokenizer(vocab_size=vocab_size)
    model = build_tiny_model(tiny or TinyModelConfig(), tokenizer, seed)
    stop_on_both_eos(model, tokenizer)
    return save_model(model, tokenizer, path)


def stop_on_both_eos(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> None:
    """generation_config.json's `eos_token_id` = [<|im_end|>, <|endoftext|>], as chat models."""
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids([IM_END, END_OF_TEXT])


if __name__ == "__main__":  # python -m omnisched.model.chat_model OUT_DIR
    import sys

    print(build_chat_model(sys.argv[1], TinyModelConfig(max_position_embeddings=2048)))
