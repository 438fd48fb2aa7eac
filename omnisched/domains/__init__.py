"""Domains: built-in procedural task families, user data files and reasoning-gym tasks."""

from __future__ import annotations

import inspect

from omnisched.config.schema import DomainConfig, Recipe
from omnisched.domains.arithmetic import ArithmeticDomain
from omnisched.domains.base import Domain, Example
from omnisched.domains.chat import ChatTemplate
from omnisched.domains.code import CodeDomain
from omnisched.domains.creative import CreativeDomain
from omnisched.domains.data import DataDomain
from omnisched.domains.gym import GymDomain
from omnisched.domains.humaneval import HumanEvalDomain
from omnisched.domains.qa import QADomain
from omnisched.errors import ConfigError
from omnisched.registry import Registry

DOMAIN_TYPES: Registry = Registry("domain type", "omnisched.domains")
DOMAIN_TYPES.add("math", ArithmeticDomain)
DOMAIN_TYPES.add("code", CodeDomain)
DOMAIN_TYPES.add("qa", QADomain)
DOMAIN_TYPES.add("creative", CreativeDomain)
DOMAIN_TYPES.add("data", DataDomain)
DOMAIN_TYPES.add("gym", GymDomain)
DOMAIN_TYPES.add("humaneval", HumanEvalDomain)


def build_domain(cfg: DomainConfig, seed: int, chat: ChatTemplate | None = None) -> Domain:
    """The domain `cfg` describes; `chat` renders conversational rows (types that take it)."""
    cls = DOMAIN_TYPES.get(cfg.type)
    try:
        if chat is not None and "chat" in inspect.signature(cls).parameters:
            return cls(cfg, seed, chat=chat)
        return cls(cfg, seed)
    except ValueError as exc:
        raise ConfigError(f"domain '{cfg.name}': {exc}") from exc


def build_domains(recipe: Recipe) -> dict[str, Domain]:
    """Every domain of `recipe` by name, conversational rows rendered with the model's template."""
    chat = ChatTemplate.of(recipe.model)
    return {d.name: build_domain(d, recipe.data_seed, chat) for d in recipe.domains}


__all__ = ["DOMAIN_TYPES", "ChatTemplate", "Domain", "Example", "build_domain", "build_domains"]
