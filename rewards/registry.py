"""The verifier registry: built-ins register with `@register(name)`, other packages through the
entry-point group `omnisched.verifiers`; recipes refer to verifiers by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omnisched.registry import Registry

Verifier = Callable[..., list[Any]]  # fn(completions: list[str], **columns) -> list[float]

VERIFIERS: Registry[Verifier] = Registry("verifier", "omnisched.verifiers")


def register(name: str | None = None) -> Callable[[Verifier], Verifier]:
    """Decorator: `@rewards.register("my_check")` makes a verifier available by name."""
    return VERIFIERS.register(name)


def get(name: str) -> Verifier:
    """The verifier registered as `name`; an unknown name raises PluginError listing known ones."""
    return VERIFIERS.get(name)


def names() -> list[str]:
    """Every known verifier name, entry points included."""
    return VERIFIERS.names()
