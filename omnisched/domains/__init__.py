"""Domains: built-in procedural task families, user data files and reasoning-gym tasks."""

from __future__ import annotations

from omnisched.config.schema import DomainConfig
from omnisched.domains.arithmetic import ArithmeticDomain
from omnisched.domains.base import Domain, Example
from omnisched.domains.code import CodeDomain
from omnisched.domains.creative import CreativeDomain
from omnisched.domains.data import DataDomain
from omnisched.domains.gym import GymDomain
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


def build_domain(cfg: DomainConfig, seed: int) -> Domain:
    try:
        return DOMAIN_TYPES.get(cfg.type)(cfg, seed)
    except ValueError as exc:
        raise ConfigError(f"domain '{cfg.name}': {exc}") from exc


__all__ = ["DOMAIN_TYPES", "Domain", "Example", "build_domain"]
