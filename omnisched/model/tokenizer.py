"""A character-level tokenizer built locally: one token per printable ASCII char, tab and newline.

It is a byte-level BPE with no merges in Qwen2's format, so every ASCII character is one token and
any other text falls back to its UTF-8 bytes (one token each) instead of being lost. Why Qwen2's
format: transformers 5 loads a `qwen2` model folder's tokenizer as `Qwen2Tokenizer` whatever
tokenizer.json says, rebuilding a byte-level BPE from its vocabulary; a tokenizer of another shape
(e.g. WordLevel) would silently change on reload by `AutoTokenizer`, TRL or vLLM. This one reloads
identically. No BOS is added; callers append EOS where they want it.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
ASCII = (9, 10, *range(32, 127))  # tab, newline, printable ASCII: ids 4..100


def char_vocab() -> dict[str, int]:
    """Specials, then ASCII in code order, then the remaining bytes, in byte-level spelling."""
    byte_to_symbol = bytes_to_unicode()
    order = [*ASCII, *(b for b in range(256) if b not in ASCII)]
    symbols = [*SPECIALS, *(byte_to_symbol[b] for b in order)]
    return {s: i for i, s in enumerate(symbols)}


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """The tokenizer of the tiny model: `decode(encode(s)) == s` for NFC text (all ASCII text)."""
    return Qwen2Tokenizer(
        vocab=char_vocab(),
        merges=[],
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
