"""What a recipe asks of its rollout engines between learner steps, its defaults resolved: the
sleep level, vLLM's share of each GPU, and whether `rollout.overlap` can run with them.

A leaf module (it imports only the config), read by the placement checks, the memory plan and
the rollout pool alike.
"""

from __future__ import annotations

from omnisched.config.schema import Recipe


def sleep_level(recipe: Recipe) -> int:
    """`rollout.sleep_level`, its default resolved: 1 where engines share GPUs, else 0."""
    level = recipe.rollout.sleep_level
    return (1 if recipe.placement.colocate else 0) if level is None else level


def gpu_memory_utilization(recipe: Recipe) -> float:
    """vLLM's share of each GPU: the recipe's, else 0.9 alone and 0.4 beside a learner rank."""
    share = recipe.rollout.gpu_memory_utilization
    return (0.4 if recipe.placement.colocate else 0.9) if share is None else share


def overlap_problems(recipe: Recipe) -> list[str]:
    """Why `rollout.overlap` cannot run with this recipe, one line per reason naming fields."""
    ro = recipe.rollout
    if not ro.overlap:
        return []
    problems = []
    level = sleep_level(recipe)
    if level:
        problems.append(
            f"rollout.overlap: true needs engines that stay awake during learner steps; got "
            f"rollout.sleep_level={level} (placement.colocate={recipe.placement.colocate}): set "
            "rollout.sleep_level: 0 (colocated GPUs then hold both at once) or overlap: false"
        )
    if ro.top_p < 1:
        problems.append(
            f"rollout.overlap: true trains against the sampler's logprobs, which rollout.top_p="
            f"{ro.top_p:g} truncates; set rollout.top_p: 1"
        )
    return problems
