"""Name -> implementation registries filled by a decorator and by importlib entry points."""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from typing import Generic, TypeVar

from omnisched.errors import PluginError

T = TypeVar("T")


class Registry(Generic[T]):
    """A registry of one plugin kind (verifier, judge, rollout engine, learner, policy, domain).

    Built-ins register with the `register` decorator; other installed packages add entries through
    the entry-point group `group` (`[project.entry-points."omnisched.verifiers"] name = "pkg:obj"`).
    """

    def __init__(self, kind: str, group: str | None = None) -> None:
        self.kind = kind
        self.group = group
        self._items: dict[str, T] = {}
        self._lazy: dict[str, str] = {}  # name -> "module:attr", imported on first `get`
        self._entry_points_loaded = False

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            key = name or getattr(obj, "__name__", None)
            if not key:
                raise PluginError(f"cannot register a {self.kind} without a name")
            self.add(key, obj)
            return obj

        return decorate

    def add(self, name: str, obj: T, *, replace: bool = False) -> None:
        if name in self._items and not replace and self._items[name] is not obj:
            raise PluginError(f"{self.kind} '{name}' is already registered")
        self._items[name] = obj

    def add_lazy(self, name: str, target: str) -> None:
        """Register `module:attr` without importing it (heavy backends: torch, vLLM, DeepSpeed)."""
        if name in self._items or name in self._lazy:
            raise PluginError(f"{self.kind} '{name}' is already registered")
        self._lazy[name] = target

    def get(self, name: str) -> T:
        if name in self._lazy and name not in self._items:
            module, _, attr = self._lazy[name].partition(":")
            try:
                self._items[name] = getattr(importlib.import_module(module), attr)
            except ImportError as exc:
                raise PluginError(
                    f"{self.kind} '{name}' needs a package that is not installed: {exc}"
                ) from exc
        if name not in self._items:
            self._load_entry_points()
        if name not in self._items:
            known = ", ".join(sorted(self.names())) or "none"
            raise PluginError(f"unknown {self.kind} '{name}'; known: {known}")
        return self._items[name]

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(set(self._items) | set(self._lazy))

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded or self.group is None:
            return
        self._entry_points_loaded = True
        for ep in importlib.metadata.entry_points(group=self.group):
            if ep.name in self._items:
                continue
            try:
                self._items[ep.name] = ep.load()
            except Exception as exc:  # a broken third-party plugin must not hide the others
                raise PluginError(
                    f"{self.kind} '{ep.name}' from entry point '{ep.value}' failed to load: {exc}"
                ) from exc
