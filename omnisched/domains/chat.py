"""Conversational prompts (TRL's format: a list of `{role, content}` messages), rendered with the
model's chat template (`apply_chat_template(..., add_generation_prompt=True, tokenize=False)`),
so rollout, evaluation and the warm start all give the model the text it was trained to read.

The template is the model folder's tokenizer's, read on first use (a recipe without
conversational rows never reads it) from the tokenizer files rather than by loading the
tokenizer, which would import torch: the Ray driver, which builds the domains, stays torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omnisched.errors import DataError

ROLES = ("system", "user", "assistant", "tool")
Messages = list[dict[str, str]]


def is_conversational(value: Any) -> bool:
    """TRL's test: a prompt is conversational when it is a list (of messages)."""
    return isinstance(value, list)


def check_messages(value: Any, where: str) -> Messages:
    """The messages, checked, or a one-line DataError saying `where`.

    HF datasets gives every message of a file the union of the keys seen, None where absent,
    so a key is missing when its value is None; such None keys are left out of the result.
    """
    if not value:
        raise DataError(f"{where}: the message list is empty")
    out = []
    for k, msg in enumerate(value):
        if not isinstance(msg, dict):
            kind = type(msg).__name__
            raise DataError(f"{where}: message {k} is a {kind}, not a {{role, content}} dict")
        keys = sorted(key for key, v in msg.items() if v is not None)
        role, content = msg.get("role"), msg.get("content")
        if role is None or content is None:
            missing = " and ".join(repr(x) for x in ("role", "content") if msg.get(x) is None)
            raise DataError(
                f"{where}: message {k} has no {missing} key (its keys: {', '.join(keys)})"
            )
        if role not in ROLES:
            raise DataError(f"{where}: message {k} has role {role!r}; known: {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise DataError(f"{where}: message {k}: content must be a string, got {content!r}")
        out.append({key: v for key, v in msg.items() if v is not None})  # e.g. `name` too
    return out


def completion_text(value: Any, where: str) -> str | None:
    """A reference completion as text: a string, or (TRL's conversational prompt-completion
    format) a list of one assistant message; None when the row has none."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        messages = check_messages(value, where)
        if len(messages) == 1 and messages[0]["role"] == "assistant":
            return messages[0]["content"]
    raise DataError(
        f"{where}: must be a string or a list of one assistant message, "
        f"got {' '.join(str(value).split())[:80]}"
    )


SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token")


class ChatTemplate:
    """The chat template of the tokenizer in `model_path` (None: the built-in tiny model, whose
    character tokenizer has none), read from its files on first use and rendered by the same
    function as transformers' `apply_chat_template(..., add_generation_prompt=True,
    tokenize=False)`, with the tokenizer's special tokens as template variables."""

    def __init__(self, model_path: str | Path | None, builtin: str | None = None) -> None:
        self.model_path = None if model_path is None else Path(model_path).expanduser()
        self._loaded: tuple[str, dict[str, str]] | None = (builtin, {}) if builtin else None

    @classmethod
    def of(cls, model_cfg: Any) -> ChatTemplate:
        """A recipe's `model`: `path`'s template, else that of the tiny model's tokenizer."""
        if model_cfg.path is None and model_cfg.tiny.tokenizer == "chat":
            from omnisched.model.chat_model import CHAT_TEMPLATE

            return cls(None, CHAT_TEMPLATE)
        return cls(model_cfg.path)

    def render(self, messages: Messages, where: str) -> str:
        """The prompt text the model sees for `messages`, ending in the assistant's turn."""
        from transformers.utils.chat_template_utils import render_jinja_template

        template, specials = self._load(where)
        try:
            rendered, _ = render_jinja_template(
                conversations=[messages],
                chat_template=template,
                add_generation_prompt=True,
                **specials,
            )
        except Exception as exc:  # jinja errors, or the template's own raise_exception
            failed = f"the chat template of {self.model_path} failed"
            raise DataError(f"{where}: {failed}: {' '.join(str(exc).split())}") from exc
        return rendered[0]

    def _load(self, where: str) -> tuple[str, dict[str, str]]:
        if self._loaded is None:
            self._loaded = self._read(where)
        return self._loaded

    def _read(self, where: str) -> tuple[str, dict[str, str]]:
        if self.model_path is None:
            raise DataError(
                f"{where}: conversational rows need a chat template, and the tiny model's char "
                "tokenizer has none; set model.tiny.tokenizer=chat, or model.path to a model "
                "folder whose tokenizer has one"
            )
        if not (self.model_path / "config.json").is_file():
            raise DataError(
                f"{where}: conversational rows need the chat template of model.path, "
                f"and {self.model_path} is not a model folder (no config.json)"
            )
        config_path = self.model_path / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        jinja = self.model_path / "chat_template.jinja"
        template = jinja.read_text() if jinja.is_file() else default_template(config)
        if not template:
            raise DataError(
                f"{where}: conversational rows need a chat template, and the tokenizer of "
                f"{self.model_path} has none (no chat_template.jinja, no chat_template in "
                "tokenizer_config.json)"
            )
        specials = {k: _content(config[k]) for k in SPECIAL_KEYS if config.get(k) is not None}
        return template, specials


def default_template(config: dict[str, Any]) -> str | None:
    """tokenizer_config.json's `chat_template`: a string, or named templates ("default")."""
    value = config.get("chat_template")
    if isinstance(value, list):  # [{"name": ..., "template": ...}, ...]
        value = {t["name"]: t["template"] for t in value}
    if isinstance(value, dict):
        value = value.get("default")
    return value or None


def _content(token: Any) -> str:
    return token["content"] if isinstance(token, dict) else str(token)
