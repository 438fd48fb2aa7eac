"""Judge prompts and verdict parsing, shared by every model-backed judge (HTTP, local HF).

Injection safety has two halves. Building: the untrusted texts (task, completion, reference) sit
inside tags named with a random per-request nonce, and any tag-like text inside them that could
close a fence or forge a verdict (`</data-...`, `<verdict>`) has its `<` escaped to `&lt;`.
Parsing: the judge's nonce-fenced echoes are cut out of its reply and the last verdict tag left
is the score; a verdict the judge quotes from the completion reaches it escaped (`&lt;verdict>`),
so it is never read as the judge's own.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

Mode = Literal["pointwise", "pairwise"]
MODES: tuple[str, ...] = ("pointwise", "pairwise")
TAG_PREFIX = "data-"  # every fence tag starts with it; escaping it makes fences unforgeable
_PLACEHOLDER = re.compile(r"\{(tag|prompt|completion|reference)\}")
_TAG_LIKE = re.compile(r"<(\s*/?\s*(?:verdict|" + re.escape(TAG_PREFIX) + r"))", re.IGNORECASE)
_VERDICT = re.compile(r"<verdict>\s*([^<>]{1,8}?)\s*</verdict>", re.IGNORECASE)
_PAIRWISE = {"a": 1.0, "tie": 0.5, "b": 0.0}  # the completion is response A


def load_template(name_or_path: str) -> str:
    """A shipped template by name (`judges/templates/<name>.md`) or a template file's path."""
    path = Path(name_or_path).expanduser()
    if path.suffix and path.is_file():
        return path.read_text(encoding="utf-8")
    shipped = resources.files("judges") / "templates" / f"{name_or_path}.md"
    if shipped.is_file():
        return shipped.read_text(encoding="utf-8")
    known = sorted(
        p.name.removesuffix(".md")
        for p in (resources.files("judges") / "templates").iterdir()
        if p.name.endswith(".md")
    )
    raise ValueError(
        f"judge template '{name_or_path}' is neither a file nor a shipped template; "
        f"shipped: {', '.join(known)}"
    )


def neutralise(text: str) -> str:
    """Escape `<` of anything that could close a fence or look like a verdict tag."""
    return _TAG_LIKE.sub(r"&lt;\1", text)


def strip_echoes(reply: str, tag: str) -> str:
    """The reply without any block the judge copied from inside our nonce fences."""
    return re.sub(rf"<{re.escape(tag)}-([\w-]*)>.*?</{re.escape(tag)}-\1>", "", reply, flags=re.S)


def parse_verdict(reply: str, mode: str, tag: str = "") -> float | None:
    """The score in [0, 1] from the reply's last verdict outside echoed fences; None if none.

    pointwise: `<verdict>N</verdict>`, N an integer 1..10, maps to (N - 1) / 9.
    pairwise: `<verdict>A|B|tie</verdict>`, A being the completion: win 1, tie 0.5, loss 0.
    """
    if tag:
        reply = strip_echoes(reply, tag)
    found = _VERDICT.findall(reply)
    if not found:
        return None
    value = found[-1].strip().lower()
    if mode == "pairwise":
        return _PAIRWISE.get(value)
    if not value.isdigit() or not 1 <= int(value) <= 10:
        return None
    return (int(value) - 1) / 9


@dataclass(frozen=True)
class JudgePrompt:
    """A template in one mode; renders chat messages for one (prompt, completion, reference)."""

    template: str
    mode: str = "pointwise"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown judge mode '{self.mode}'; known: {', '.join(MODES)}")
        needed = {"tag", "completion"} | ({"reference"} if self.mode == "pairwise" else set())
        missing = needed - set(_PLACEHOLDER.findall(self.template))
        if missing:
            raise ValueError(
                f"judge template for mode '{self.mode}' lacks {sorted(missing)} placeholders"
            )

    @property
    def uses_reference(self) -> bool:
        return "{reference}" in self.template

    @property
    def digest(self) -> str:
        """Identifies the template text (part of the cache key)."""
        return hashlib.sha256(self.template.encode()).hexdigest()[:16]

    def render(
        self, prompt: str, completion: str, reference: str = "", nonce: str | None = None
    ) -> tuple[list[dict[str, str]], str]:
        """(chat messages, fence tag); the tag is needed again to parse the reply."""
        tag = TAG_PREFIX + (nonce or secrets.token_hex(6))
        values = {
            "tag": tag,
            "prompt": neutralise(prompt),
            "completion": neutralise(completion),
            "reference": neutralise(reference),
        }
        # one pass: substituted text is never scanned again, so a completion that contains
        # "{reference}" or "{tag}" stays literal text
        text = _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.template)
        return [{"role": "user", "content": text}], tag

    def parse(self, reply: str, tag: str = "") -> float | None:
        return parse_verdict(reply, self.mode, tag)
