"""Everything `omnisched run` would refuse for a recipe, checked before anything is created or
started, and by `--dry-run` with the same words: plugin names and options (`check_plugins`,
also part of loading a recipe), the placements the controller cannot start, every domain's data
(files exist and parse), `model.path` and LoRA's target modules (`check_runnable`). Each problem
is one line naming the field."""

from __future__ import annotations

import inspect
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from omnisched.config.lora import ALL_LINEAR
from omnisched.config.schema import Recipe
from omnisched.errors import ConfigError, OmniError
from omnisched.model.cache import given_folder

NOT_OPTIONS = {"completions", "prompts"}  # what every verifier receives, never from a recipe


def check_plugins(recipe: Recipe, source: str = "recipe") -> None:
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

    for i, dom in enumerate(recipe.domains):
        for k, comp in enumerate(dom.reward or []):
            if comp.verifier is not None and comp.options:
                _check_verifier_options(
                    rewards.get(comp.verifier),
                    comp.verifier,
                    comp.options,
                    f"{source}: domains.{i}.reward.{k}",
                )


def _check_verifier_options(fn, name: str, options: dict, where: str) -> None:
    """A verifier's options arrive as keyword columns: each must be a named parameter of it (its
    `**kwargs`, if any, swallows dataset columns, so a typo there would be silently ignored)."""
    params = inspect.signature(fn).parameters
    named = [
        p
        for p, v in params.items()
        if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY) and p not in NOT_OPTIONS
    ]
    unknown = sorted(set(options) - set(named))
    if unknown:
        raise ConfigError(
            f"{where}.options: verifier '{name}' has no option(s) {unknown}; "
            f"it takes: {', '.join(named) or 'none'}"
        )


def check_runnable(recipe: Recipe) -> None:
    """What `run` refuses beyond the recipe's own validity: placements the controller cannot
    start yet, domain data that is missing or does not parse, a `model.path` that is no HF
    folder, LoRA targets that match no module of the model. OmniError, one line."""
    from omnisched.domains import ChatTemplate, build_domain
    from omnisched.orchestration.placement import unsupported_by_controller

    problems = unsupported_by_controller(recipe)
    if problems:
        raise OmniError("; ".join(problems))
    chat = ChatTemplate.of(recipe.model)  # conversational rows are rendered as `run` would
    for cfg in recipe.domains:
        build_domain(cfg, recipe.data_seed, chat)  # DataError / ConfigError name the file
    given_folder(recipe.model)  # DataError naming model.path
    problem = lora_target_problem(recipe)
    if problem:
        raise ConfigError(problem)


def lora_target_problem(recipe: Recipe) -> str | None:
    """`check_targets`' words on `learner.lora.target_modules` and the model RL starts from
    (`model.path`, or the tiny model: the warm start does not change its modules), None when all
    match. Module names need torch, which the driver never imports: a child process builds the
    model on the meta device (no weights), a few seconds, only where targets are named."""
    if recipe.learner.lora is None or recipe.learner.lora.target_modules == ALL_LINEAR:
        return None
    model = given_folder(recipe.model) or recipe.model.tiny
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        return child.submit(_lora_target_problem, model, recipe.learner.lora).result()


def _lora_target_problem(model: Any, lora: Any) -> str | None:
    """The child's side of `lora_target_problem` (torch loads there)."""
    from omnisched.learner.lora import target_problem

    return target_problem(model, lora)
