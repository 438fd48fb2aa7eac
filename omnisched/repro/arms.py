"""The arms of the comparison and their compute, counted before anything runs.

Every training arm gets the same RL budget: K domains x `steps_per_phase` GRPO steps of
`prompts_per_step` prompts x `group_size` completions, one optimizer step per GRPO step and
PPO epoch. How each arm spends it:
- joint: K phases of `steps_per_phase` steps, each step mixing all K domains;
- bwt: K single-domain phases in the order the BWT planner picks online (with the recipe's
  `probe_steps`, its probe phases are paid from those K phases' steps: same budget);
- reverse: K single-domain phases in the reverse of the order the bwt arm trained;
- structured-first: K single-domain phases, structured domains then open-ended ones, each in
  recipe order (Omni-Thinker v1's fixed order);
- bandit, tac, learnability: K phases of online mixtures re-weighted every step;
- order-<a>-<b>-...: every order with the sequential policy (`--all-orders`);
- merge-ta / merge-ties: K expert runs, one per domain, each one phase of `steps_per_phase`
  steps on that domain only (exactly the per-domain budget a curriculum phase gets), all from
  the same warm-started base; the two merges share these runs;
- base: the warm-started model, no RL (0 samples).
Evaluation is not RL compute and is not counted; the curriculum arms evaluate after every phase
(the bwt policy needs those measurements), the merges once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from omnisched.errors import ConfigError

MAX_ALL_ORDERS = 24  # 4 domains; 5 would be 120 full runs per seed


@dataclass(frozen=True)
class RunSpec:
    """One Controller run. `reverse_of` names the arm whose measured training order, reversed,
    becomes this run's order (known only after that arm ran)."""

    name: str
    policy: str
    phases: int
    order: tuple[str, ...] | None = None
    reverse_of: str | None = None


@dataclass(frozen=True)
class ArmSpec:
    """An arm of the comparison: the runs it trains and how its final model is made
    (`final`: 'run' = the single run's final checkpoint, 'base', 'ta' or 'ties' merges)."""

    name: str
    runs: tuple[RunSpec, ...]
    final: str = "run"


@dataclass(frozen=True)
class Compute:
    grpo_steps: int
    optimizer_steps: int
    rl_samples: int


def order_name(order: Sequence[str]) -> str:
    return "order-" + "-".join(order)


ONLINE = ("bandit", "tac", "learnability")


def plan_arms(
    domains: Sequence[str], all_orders: bool = False, kinds: Mapping[str, str] | None = None
) -> list[ArmSpec]:
    """The arms, in the order they must run (reverse after bwt)."""
    k = len(domains)
    kinds = kinds or {}
    experts = tuple(RunSpec(f"expert-{d}", "sequential", 1, order=(d,)) for d in domains)
    structured_first = tuple(sorted(domains, key=lambda d: kinds.get(d) == "open"))
    arms = [
        ArmSpec("base", (), final="base"),
        ArmSpec("joint", (RunSpec("joint", "joint", k),)),
        ArmSpec("bwt", (RunSpec("bwt", "bwt", k),)),
        ArmSpec("reverse", (RunSpec("reverse", "sequential", k, reverse_of="bwt"),)),
        ArmSpec(
            "structured-first",
            (RunSpec("structured-first", "sequential", k, order=structured_first),),
        ),
        *(ArmSpec(p, (RunSpec(p, p, k),)) for p in ONLINE),
        ArmSpec("merge-ta", experts, final="ta"),  # the two merges share the same expert runs
        ArmSpec("merge-ties", experts, final="ties"),
    ]
    if all_orders:
        n = math.factorial(k)
        if n > MAX_ALL_ORDERS:
            raise ConfigError(
                f"--all-orders with {k} domains means {n} full runs per seed; at most "
                f"{MAX_ALL_ORDERS} are allowed (4 domains)"
            )
        for order in itertools.permutations(domains):
            name = order_name(order)
            arms.append(ArmSpec(name, (RunSpec(name, "sequential", k, order=tuple(order)),)))
    return arms


def run_compute(
    run: RunSpec, steps_per_phase: int, prompts_per_step: int, group_size: int, ppo_epochs: int
) -> Compute:
    steps = run.phases * steps_per_phase
    return Compute(steps, steps * ppo_epochs, steps * prompts_per_step * group_size)


def arm_compute(
    arms: Sequence[ArmSpec],
    steps_per_phase: int,
    prompts_per_step: int,
    group_size: int,
    ppo_epochs: int = 1,
) -> dict[str, Compute]:
    """Planned RL compute per arm (the sum over its runs)."""
    out = {}
    for arm in arms:
        parts = [
            run_compute(r, steps_per_phase, prompts_per_step, group_size, ppo_epochs)
            for r in arm.runs
        ]
        out[arm.name] = Compute(
            sum(c.grpo_steps for c in parts),
            sum(c.optimizer_steps for c in parts),
            sum(c.rl_samples for c in parts),
        )
    return out


def check_equal_compute(
    compute: dict[str, Compute], untrained: Sequence[str] = ("base",)
) -> Compute:
    """The shared budget of every trained arm; ValueError naming the arms when they differ."""
    trained = {a: c for a, c in compute.items() if a not in untrained}
    budgets = set(trained.values())
    if len(budgets) != 1:
        listing = ", ".join(f"{a}: {c}" for a, c in trained.items())
        raise ValueError(f"arms do not have equal RL compute: {listing}")
    return budgets.pop()
