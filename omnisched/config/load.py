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
    from omnisched.preflight import check_plugins  # the plugin packages load lazily

    check_plugins(recipe, source)
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


def _one_line(text: str) -> str:
    return " ".join(text.split())
