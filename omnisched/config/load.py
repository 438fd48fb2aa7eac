"""Load a YAML recipe, apply dotted `key=value` overrides, validate it into a `Recipe`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from omnisched.config.schema import Recipe
from omnisched.errors import ConfigError


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read `path`, apply overrides such as `learner.lr=1e-5` or `domains.0.eval_size=32`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_one_line(str(exc))}") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}"
        )
    for item in overrides or []:
        apply_override(data, item)
    return validate_recipe(data, source=str(path))


def validate_recipe(data: dict[str, Any], source: str = "recipe") -> Recipe:
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {format_validation_error(exc)}") from None
    _check_plugin_names(recipe, source)
    return recipe


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set a dotted key in nested dicts/lists; the value is parsed as YAML (`1e-5`, `[a, b]`)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{item}' must look like section.field=value")
    parts = key.strip().split(".")
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        node = _descend(node, part, ".".join(parts[: depth + 1]))
    last = parts[-1]
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(node, list):
        node[_index(node, last, key)] = value
    else:
        node[last] = value


def _descend(node: Any, part: str, where: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, where)]
    if not isinstance(node, dict):
        raise ConfigError(f"override: '{where}' is not a section")
    return node.setdefault(part, {})


def _index(node: list, part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override: '{where}' needs a list index below {len(node)}")
    return int(part)


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming its dotted field path."""
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "recipe"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif (
            "input" in err
            and err["type"] not in ("missing",)
            and not isinstance(err["input"], dict | list)
        ):
            msg = f"{msg} (got {err['input']!r})"
        problems.append(f"{loc}: {msg}")
    return "; ".join(problems)


def _check_plugin_names(recipe: Recipe, source: str) -> None:
    """Unknown domain types, policies, engines, learners or verifiers fail at load time."""
    from omnisched.domains import DOMAIN_TYPES
    from omnisched.schedule.policies import POLICIES

    for i, dom in enumerate(recipe.domains):
        if dom.type not in DOMAIN_TYPES:
            raise ConfigError(
                f"{source}: domains.{i}.type: unknown domain type '{dom.type}'; "
                f"known: {', '.join(DOMAIN_TYPES.names())}"
            )
    if recipe.schedule.policy not in POLICIES:
        raise ConfigError(
            f"{source}: schedule.policy: unknown policy '{recipe.schedule.policy}'; "
            f"known: {', '.join(POLICIES.names())}"
        )
    import judges
    import rewards
    from omnisched.learner import LEARNERS
    from omnisched.rollout import ENGINES

    checks = [
        ("rollout.backend", recipe.rollout.backend, ENGINES),
        ("learner.backend", recipe.learner.backend, LEARNERS),
    ]
    for i, dom in enumerate(recipe.domains):
        for k, comp in enumerate(dom.reward or []):
            if comp.verifier is not None:
                checks.append(
                    (f"domains.{i}.reward.{k}.verifier", comp.verifier, rewards.VERIFIERS)
                )
            else:
                checks.append((f"domains.{i}.reward.{k}.judge", comp.judge, judges.JUDGES))
    for field, name, registry in checks:
        if name not in registry:
            raise ConfigError(
                f"{source}: {field}: unknown {registry.kind} '{name}'; "
                f"known: {', '.join(registry.names())}"
            )
    import inspect

    from omnisched.scoring import evaluation_order

    for i, dom in enumerate(recipe.domains):
        for k, comp in enumerate(dom.reward or []):
            if comp.judge is None:
                continue
            try:  # judge options are constructor keywords: a typo fails here, not in a worker
                inspect.signature(judges.get(comp.judge)).bind(**comp.options)
            except TypeError as exc:
                raise ConfigError(
                    f"{source}: domains.{i}.reward.{k}.options: judge '{comp.judge}': {exc}"
                ) from None

    for i, dom in enumerate(recipe.domains):
        try:  # duplicate component names, unknown gates, gate cycles
            evaluation_order(dom.reward or [])
        except ConfigError as exc:
            raise ConfigError(f"{source}: domains.{i}.reward: {exc}") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())
