"""Chat generation from a local HF causal-LM folder, shared by `hf_local` and `judges.serve`.

torch and transformers are imported when a generator is built, never when this module is, so
the Ray driver can import `judges` without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


class PromptTooLong(ValueError):
    """The rendered prompt leaves no room to generate within the model's context."""


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The tokenizer's chat template, or a plain role-tagged transcript for models without one
    (such as the tiny char-level model), ending where the assistant's reply starts."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    turns = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
    return turns + "<|assistant|>\n"


class LocalGenerator:
    """A model folder loaded once; `generate` answers a batch of chats (greedy at temperature 0)."""

    def __init__(
        self, path: str | Path, dtype: str = "float32", threads: int | None = None
    ) -> None:
        import torch

        from omnisched.model.build import load_model, stop_token_ids

        if threads:
            torch.set_num_threads(threads)
        self.path = Path(path).expanduser()
        self.model, self.tokenizer = load_model(self.path, dtype)
        self.tokenizer.padding_side = "left"  # generation continues every row at the same end
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.context = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.stops = stop_token_ids(self.model, self.tokenizer)  # chat models: several EOS ids

    @property
    def name(self) -> str:
        return self.path.name

    def generate(
        self,
        chats: list[list[dict[str, str]]],
        max_tokens: int = 256,
        temperature: float = 0.0,
        stop: list[str] | None = None,
    ) -> list[Generation]:
        """One reply per chat; raises PromptTooLong when a prompt fills the context."""
        import torch

        texts = [render_chat(self.tokenizer, chat) for chat in chats]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        width = batch["input_ids"].shape[1]
        room = self.context - width
        if room < 1:
            raise PromptTooLong(
                f"prompt of {width} tokens leaves no room in the {self.context}-token context"
            )
        sampling: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
        with torch.no_grad():
            out = self.model.generate(
                **{k: v.to(self.device) for k, v in batch.items()},
                max_new_tokens=min(max_tokens, room),
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.stops,
                **sampling,
            )
        lengths = batch["attention_mask"].sum(-1).tolist()
        return [self._decode(row[width:].tolist(), int(n), stop) for row, n in zip(out, lengths)]

    def _decode(self, ids: list[int], prompt_tokens: int, stop: list[str] | None) -> Generation:
        pad = self.tokenizer.pad_token_id
        end = next((k for k, i in enumerate(ids) if i in self.stops), None)
        finish = "stop" if end is not None else "length"
        ids = ids[:end] if end is not None else [i for i in ids if i != pad]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for s in stop or []:
            if s and s in text:
                text, finish = text[: text.index(s)], "stop"
        return Generation(text, finish, prompt_tokens, len(ids))
