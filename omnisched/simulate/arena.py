"""Every scheduling policy driven through the real `SchedulerService` on simulated worlds,
exactly as the controller drives it: `record_baseline`, then per phase `next_phase`, the
phase's steps with `observe_step` after each, and `finish_phase` with a noisy evaluation.

Compute-fair: every policy gets the same step budget (K phases x steps_per_phase), probe
phases included (a policy that probes trains its regular phases for fewer steps). Scores are
true final accuracies (not measured ones), as points of mean accuracy over the domains:
- regret = the best single-domain order's final mean - the policy's (the oracle order knows
  the world; every order is simulated, so K <= 6);
- baselines: a random order (the exact mean over all orders) and the uniform mixture (every
  step mixes all domains equally, what `joint` does).
A world is one where structured-first is wrong when the best order that trains every open
domain first beats the best order that trains every structured domain first.
`summarise` gives bootstrap 95% confidence intervals over worlds.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from omnisched.config.schema import ScheduleConfig
from omnisched.orchestration.services import SchedulerService
from omnisched.schedule.estimate import fit
from omnisched.schedule.planner import as_plan, predict_final
from omnisched.schedule.policies import Decision
from omnisched.schedule.prediction import order_rank_correlation
from omnisched.schedule.state import Evaluation, SchedulerState
from omnisched.simulate.world import (
    World,
    WorldState,
    evaluate,
    initial_state,
    run_mixture,
    run_order,
    sample_world,
    step_stats,
    train,
    train_mixture,
)


@dataclass(frozen=True)
class Arm:
    """A policy and its schedule options (`probe_steps`, ...), under a display name."""

    name: str
    policy: str
    options: dict = field(default_factory=dict)


DEFAULT_ARMS = (
    Arm("bwt", "bwt"),  # the defaults: a quarter-phase probe per domain, planned lengths
    Arm("bwt-no-probes", "bwt", {"probe_steps": 0}),
    Arm("bwt-equal-lengths", "bwt", {"plan_lengths": False}),
    Arm("structured-first", "sequential"),  # Omni-Thinker v1's fixed order
    Arm("bandit", "bandit"),
    Arm("learnability", "learnability"),
    Arm("tac", "tac"),
    Arm("joint", "joint"),
)


@dataclass
class Outcome:
    """One world: true final mean accuracy per arm and per baseline, and diagnostics."""

    K: int
    oracle: float
    random_order: float
    uniform: float
    structured_first_wrong: bool
    final: dict[str, float] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    first_decision_mae: dict[str, float] = field(default_factory=dict)
    decision_mae: dict[str, list[float]] = field(default_factory=dict)
    rank_corr: dict[str, list[float | None]] = field(default_factory=dict)  # per plan


def structured_first_order(world: World) -> list[int]:
    return sorted(range(world.K), key=lambda d: (world.is_open(d), d))


OnDecision = Callable[[Decision, SchedulerState, WorldState], None]


def drive(
    world: World,
    arm: Arm,
    rng: np.random.Generator,
    steps_per_phase: int,
    on_decision: OnDecision | None = None,
) -> tuple[WorldState, SchedulerState, int]:
    """One run of `arm` on `world`; (final world state, scheduler state, steps trained).
    `on_decision` sees every decision with the scheduler's and the world's state then."""
    names = list(world.names)
    kinds = dict(zip(names, world.kinds))
    options = dict(arm.options)
    if arm.policy == "sequential":
        options.setdefault("order", [names[d] for d in structured_first_order(world)])
    cfg = ScheduleConfig(policy=arm.policy, steps_per_phase=steps_per_phase, **options)
    svc = SchedulerService(SchedulerState(names, kinds, arm.policy, world.K), cfg, None)
    state = initial_state(world)
    svc.record_baseline(Evaluation(*evaluate(world, state, rng)))
    step = 0
    for _ in range(svc.planned_phases()):
        decision = svc.next_phase()
        if on_decision is not None:
            on_decision(decision, svc.state, state)
        steps = decision.steps or steps_per_phase
        weights = _weights(names, decision.domains, decision.mixture)
        for _ in range(steps):
            train_mixture(world, state, weights, 1.0 / steps_per_phase)
            stats = step_stats(world, state, weights, rng)
            step += 1
            mixture = svc.observe_step(step, stats)
            if mixture:
                weights = _weights(names, decision.domains, mixture)
        svc.finish_phase(steps, Evaluation(*evaluate(world, state, rng)))
    return state, svc.state, step


def _weights(names: list[str], domains: list[str], mixture: dict[str, float] | None) -> list[float]:
    if mixture:
        return [mixture.get(n, 0.0) for n in names]
    return [1.0 / len(domains) if n in domains else 0.0 for n in names]


def play(
    seed: int,
    arms: Sequence[Arm] = DEFAULT_ARMS,
    steps_per_phase: int = 20,
    agreement: bool = True,
) -> Outcome:
    """One world (drawn from `seed`), every arm, the oracle and both baselines; with
    `agreement`, the planner's rank agreement with the truth at every plan (costly: every
    order is simulated at every decision)."""
    rng = np.random.default_rng(seed)
    world = sample_world(rng)
    values = {o: run_order(world, o).mean() for o in itertools.permutations(range(world.K))}
    oracle = max(values.values())
    best_structured_first = max(v for o, v in values.items() if _kinds_in_blocks(world, o, False))
    best_open_first = max(v for o, v in values.items() if _kinds_in_blocks(world, o, True))
    uniform = run_mixture(
        world, [1 / world.K] * world.K, world.K * steps_per_phase, steps_per_phase
    )
    out = Outcome(
        K=world.K,
        oracle=oracle,
        random_order=sum(values.values()) / len(values),
        uniform=uniform.mean(),
        structured_first_wrong=best_open_first > best_structured_first,
    )
    for arm in arms:
        noise = np.random.default_rng([seed, zlib.crc32(arm.name.encode())])
        ranks: list[float | None] = []
        first_plan = _plan_recorder(world, steps_per_phase, ranks) if agreement else None
        final, sched, steps = drive(world, arm, noise, steps_per_phase, first_plan)
        out.final[arm.name] = final.mean()
        out.steps[arm.name] = steps
        maes = _decision_mae(sched, final.skill, world)
        out.decision_mae[arm.name] = maes
        if maes:
            out.first_decision_mae[arm.name] = maes[0]
        if ranks:
            out.rank_corr[arm.name] = ranks
    return out


def _plan_recorder(world: World, steps_per_phase: int, into: list) -> OnDecision:
    """A decision hook: each plan's order agreement (`order_agreement`) appended to `into`."""

    def record(decision: Decision, sched: SchedulerState, now: WorldState) -> None:
        if decision.planned_order and len(decision.planned_order) > 1:
            into.append(order_agreement(world, now, sched, decision, steps_per_phase))

    return record


def _kinds_in_blocks(world: World, order: Sequence[int], open_first: bool) -> bool:
    """Whether `order` trains one kind entirely before the other (open first or structured)."""
    kinds = [world.is_open(d) for d in order]
    return kinds == sorted(kinds, reverse=open_first)


def _decision_mae(sched: SchedulerState, final: list[float], world: World) -> list[float]:
    """Per decision that predicted final accuracies: MAE against the true final accuracies."""
    truth = dict(zip(world.names, final))
    return [
        sum(abs(p.predicted_final[d] - truth[d]) for d in truth) / len(truth)
        for p in sched.phases
        if p.predicted_final and not p.probe
    ]


def order_agreement(
    world: World, now: WorldState, sched: SchedulerState, decision: Decision, steps_per_phase: int
) -> float | None:
    """Spearman rho, over every order of the domains the decision planned, between the
    planner's predicted final mean accuracy and the world's true one, from this state."""
    model = fit(sched, steps_per_phase)
    x = (decision.steps or steps_per_phase) / steps_per_phase
    names = list(world.names)
    planned = decision.planned_order or []
    runs = []
    for order in itertools.permutations(planned):
        state = now.copy()
        for d in order:
            train(world, state, names.index(d), x)
        predicted = predict_final(as_plan(order, x), model)
        runs.append((predicted, dict(zip(names, state.skill))))
    return order_rank_correlation(runs)


@dataclass
class Summary:
    """Means over worlds with bootstrap 95% CIs, in points of mean accuracy."""

    worlds: int
    regret: dict[str, tuple[float, float, float]]  # arm -> (mean, lo, hi)
    ratio_to_random: dict[str, tuple[float, float, float]]
    vs_uniform: dict[str, tuple[float, float, float]]  # arm regret - uniform regret
    subset: dict[str, dict[str, tuple[float, float, float]]]  # "structured-first wrong" etc.
    steps: dict[str, float]
    decision_mae: dict[str, tuple[float, float, float]]  # at the first planning decision
    mae_by_decision: dict[str, list[tuple[float, float, float]]]  # per decision index
    rank_corr: dict[str, list[tuple[float, float, float]]]  # across orders, per plan
    structured_first_wrong: int

    def to_json(self) -> dict:
        return asdict(self)


def bootstrap(
    values: np.ndarray, stat: Callable[[np.ndarray], float], reps: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(statistic, 2.5th and 97.5th percentile over `reps` resamples of the rows)."""
    rng = np.random.default_rng(seed)
    n = len(values)
    draws = [stat(values[rng.integers(0, n, n)]) for _ in range(reps)]
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return float(stat(values)), float(lo), float(hi)


def summarise(outcomes: Sequence[Outcome], arms: Sequence[str]) -> Summary:
    """Regret per arm and baseline; ratio of mean regrets to a random order's; difference to
    the uniform mixture's; the same on the worlds where structured-first is wrong."""

    def table(rows: Sequence[Outcome]) -> dict[str, tuple[float, float, float]]:
        oracle = np.array([o.oracle for o in rows])
        cols = {a: oracle - np.array([o.final[a] for o in rows]) for a in arms}
        cols["random order"] = oracle - np.array([o.random_order for o in rows])
        cols["uniform mixture"] = oracle - np.array([o.uniform for o in rows])
        return {k: bootstrap(100 * v, np.mean) for k, v in cols.items()}

    oracle = np.array([o.oracle for o in outcomes])
    rand = oracle - np.array([o.random_order for o in outcomes])
    unif = oracle - np.array([o.uniform for o in outcomes])
    ratio, vs_uniform = {}, {}
    for a in arms:
        reg = oracle - np.array([o.final[a] for o in outcomes])
        pair = np.stack([reg, rand], axis=1)
        ratio[a] = bootstrap(pair, lambda m: float(m[:, 0].mean() / max(m[:, 1].mean(), 1e-12)))
        vs_uniform[a] = bootstrap(100 * (reg - unif), np.mean)
    wrong = [o for o in outcomes if o.structured_first_wrong]
    subset = {"structured-first wrong": table(wrong)} if len(wrong) > 1 else {}
    maes, by_index, rho = {}, {}, {}
    for a in arms:
        firsts = np.array([o.first_decision_mae[a] for o in outcomes if a in o.first_decision_mae])
        if len(firsts):
            maes[a] = bootstrap(100 * firsts, np.mean)
        depth = max((len(o.decision_mae.get(a, [])) for o in outcomes), default=0)
        by_index[a] = [
            bootstrap(
                100
                * np.array(
                    [o.decision_mae[a][i] for o in outcomes if len(o.decision_mae.get(a, [])) > i]
                ),
                np.mean,
            )
            for i in range(depth)
        ]
        plans = max((len(o.rank_corr.get(a, [])) for o in outcomes), default=0)
        rho[a] = [
            bootstrap(np.array(vals), np.mean)
            for i in range(plans)
            if len(vals := [o.rank_corr[a][i] for o in outcomes if _has(o.rank_corr.get(a), i)]) > 1
        ]
    return Summary(
        worlds=len(outcomes),
        regret=table(outcomes),
        ratio_to_random=ratio,
        vs_uniform=vs_uniform,
        subset=subset,
        steps={a: float(np.mean([o.steps[a] for o in outcomes])) for a in arms},
        decision_mae=maes,
        mae_by_decision={a: v for a, v in by_index.items() if v},
        rank_corr={a: v for a, v in rho.items() if v},
        structured_first_wrong=len(wrong),
    )


def _has(values: list | None, i: int) -> bool:
    return values is not None and len(values) > i and values[i] is not None


def fmt(ci: tuple[float, float, float], digits: int = 2) -> str:
    m, lo, hi = ci
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
