"""The Domain abstraction: prompts to train on, a held-out eval set, and how to reward them."""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

from omnisched.config.schema import DomainConfig, RewardComponent

Kind = Literal["structured", "open"]


@dataclass(frozen=True)
class Example:
    """One prompt with the dataset columns its reward needs (TRL style: `answer`, `tests`, ...).

    `demonstration` is a reference completion used by the SFT warm start, when one exists.
    """

    id: str
    prompt: str
    columns: dict[str, Any] = field(default_factory=dict)
    demonstration: str | None = None


class Domain(ABC):
    """A task family. Subclasses generate `Example`s; the held-out eval set never meets training.

    `kind` is "structured" (a rule-based verifier decides) or "open" (a judge or rubric scores).
    """

    kind: Kind = "structured"
    default_reward: tuple[RewardComponent, ...] = ()

    def __init__(self, cfg: DomainConfig, seed: int) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.seed = seed
        self.reward = list(cfg.reward) if cfg.reward else list(self.default_reward)
        self.eval_set = self._build_eval_set(cfg.eval_size)
        self._eval_ids = {ex.id for ex in self.eval_set}

    @abstractmethod
    def sample(self, rng: random.Random) -> Example:
        """Draw one example (may collide with the eval set; `train_batch` filters those out)."""

    def train_batch(self, rng: random.Random, n: int) -> list[Example]:
        """`n` training examples, none of them in the held-out eval set."""
        out: list[Example] = []
        tries = 0
        while len(out) < n:
            ex = self.sample(rng)
            tries += 1
            if ex.id not in self._eval_ids:
                out.append(ex)
            elif tries > 100 * n:
                raise RuntimeError(
                    f"domain '{self.name}': cannot draw examples outside its eval set"
                )
        return out

    def demonstrations(self, rng: random.Random, n: int) -> list[tuple[str, str]]:
        """(prompt, completion) pairs for the SFT warm start, drawn outside the eval set."""
        return [
            (ex.prompt, ex.demonstration) for ex in self.train_batch(rng, n) if ex.demonstration
        ]

    def _build_eval_set(self, size: int) -> list[Example]:
        rng = random.Random(_stable_seed(self.name, "eval", self.seed))
        seen: dict[str, Example] = {}
        tries = 0
        while len(seen) < size and tries < 50 * size:
            ex = self.sample(rng)
            seen.setdefault(ex.id, ex)
            tries += 1
        return list(seen.values())


def _stable_seed(*parts: object) -> int:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def option(cfg: DomainConfig, key: str, default: Any, kind: type) -> Any:
    """Read `domains[*].options.key`, checking its type so a recipe typo names the option."""
    from omnisched.errors import ConfigError

    value = cfg.options.get(key, default)
    if kind is float and isinstance(value, int):
        value = float(value)
    if not isinstance(value, kind):
        raise ConfigError(
            f"domain '{cfg.name}': options.{key} must be {kind.__name__}, got {value!r}"
        )
    return value


def check_options(cfg: DomainConfig, allowed: set[str]) -> None:
    from omnisched.errors import ConfigError

    unknown = sorted(set(cfg.options) - allowed)
    if unknown:
        raise ConfigError(
            f"domain '{cfg.name}' (type {cfg.type}): unknown option(s) {unknown}; "
            f"known: {sorted(allowed)}"
        )
