"""Simulated multi-domain RL worlds where the truth is known, to judge scheduling policies.

A world has K domains, each `structured` (a verifier scores it) or `open` (a judge does). Its
state: each domain's true accuracy s_d, the part of it learned in d's recent training that is
still fresh f_d, the policy's entropy E, and the domain trained just before. Training domain a
for x phase-equivalents (x = steps / steps_per_phase) does, in order:

- learning (saturating): s_a += g (c_a - s_a), g = 1 - (1 - r_a)^(x m); r_a is the fraction
  of the gap to the ceiling c_a one phase closes, m = (1 + I[p][a]) * (E^beta if a is open):
  interference from the domain p trained just before, and entropy collapse slowing open-ended
  learning. The gain is fresh (joins f_a).
- transfer: every other b moves by x T[a][b], within [0, c_b]. T has kind-pair means plus a
  per-row (how a's training affects others) and per-column (how fragile b is) effect.
- forgetting of fresh skill: every other b loses f_b (1 - exp(-phi_b x k)), k = 1 + psi when a
  is structured and b open (entropy collapse erasing open-ended gains), else 1.
- entropy: structured training collapses it (E *= exp(-kappa x)); open training restores it
  (E += (1 - E)(1 - exp(-kappa_open x))).

Every parameter is drawn per world from wide priors (`sample_world`), so some worlds reward
training structured domains first (large psi) and others punish it (large beta, open domains
that others' training helps, fragile structured domains). The priors were set, before any
policy was scored on them, so that the best structured-first order beats the best open-first
one in a little over half of the worlds (55% of the first 200): Omni-Thinker found structured
first to work on real models, and the other worlds are where it is wrong.

Evaluations are noisy like real ones: each domain has `eval_items` fixed items of spread
difficulty (logit offsets), every item is answered `eval_samples` times (avg@k), so the
scheduler sees per-item scores and must tell effects from noise. Per-step training statistics
mimic the controller's: mean reward per domain from prompts_per_step x group_size samples, mean
|advantage| (learnability), and a gradient-alignment proxy between domains trained together (a
modelling assumption: it reflects the symmetric part of transfer, with noise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

KINDS = ("structured", "open")


@dataclass(frozen=True)
class World:
    names: tuple[str, ...]
    kinds: tuple[str, ...]
    start: list[float]  # [K] true accuracy before RL
    ceiling: list[float]  # [K]
    rate: list[float]  # [K] fraction of the gap to the ceiling one phase closes
    transfer: list[list[float]]  # [K][K] T[a][b]: a's full phase moves b by it; diagonal 0
    fragility: list[float]  # [K] phi: fresh skill lost per phase of other training
    interference: list[list[float]]  # [K+1][K] I[p][a]; row K = no previous domain (all 0)
    entropy_collapse: float  # kappa
    entropy_recovery: float  # kappa_open
    entropy_sensitivity: float  # beta
    open_erasure: float  # psi
    entropy_scale: np.ndarray  # [K] measured entropy = E * scale
    difficulty: np.ndarray  # [K, M] item logit offsets of each eval set
    accuracy_curve: np.ndarray  # [K, len(THETA)] mean item success at each logit shift

    @property
    def K(self) -> int:
        return len(self.names)

    def is_open(self, d: int) -> bool:
        return self.kinds[d] == "open"


@dataclass
class WorldState:
    skill: list[float]  # [K] true accuracy
    fresh: list[float]  # [K]
    entropy: float = 1.0
    previous: int | None = None  # the domain trained last (interference)

    def copy(self) -> WorldState:
        return replace(self, skill=list(self.skill), fresh=list(self.fresh))

    def mean(self) -> float:
        return sum(self.skill) / len(self.skill)


def sample_world(rng: np.random.Generator, K: int | None = None, eval_items: int = 128) -> World:
    """A world from the priors in the module docstring (K uniform in 3..6 when not given)."""
    K = int(rng.integers(3, 7)) if K is None else K
    kinds = ["open" if rng.random() < 0.35 else "structured" for _ in range(K)]
    if "open" not in kinds:
        kinds[int(rng.integers(K))] = "open"
    if "structured" not in kinds:
        kinds[int(rng.integers(K))] = "structured"
    difficulty = rng.normal(0.0, 1.2, (K, eval_items))
    start = rng.uniform(0.1, 0.55, K)
    ceiling = np.minimum(0.95, start + rng.uniform(0.15, 0.45, K))
    pair_mean = {
        ("structured", "structured"): 0.01,
        ("structured", "open"): -0.015,
        ("open", "structured"): 0.0,
        ("open", "open"): 0.01,
    }
    T = np.array([[pair_mean[(kinds[a], kinds[b])] for b in range(K)] for a in range(K)])
    T += rng.normal(0, 0.02, (K, 1)) + rng.normal(0, 0.02, (1, K)) + rng.normal(0, 0.02, (K, K))
    np.fill_diagonal(T, 0.0)
    interference = np.vstack([np.clip(rng.normal(0, 0.1, (K, K)), -0.3, 0.3), np.zeros((1, K))])
    np.fill_diagonal(interference[:K], 0.0)
    scale = np.where(np.array(kinds) == "open", rng.uniform(0.8, 2.0, K), rng.uniform(0.3, 1.0, K))
    return World(
        names=tuple(f"d{i}" for i in range(K)),
        kinds=tuple(kinds),
        start=start.tolist(),
        ceiling=ceiling.tolist(),
        rate=rng.uniform(0.3, 0.75, K).tolist(),
        transfer=T.tolist(),
        fragility=rng.uniform(0.0, 0.8, K).tolist(),
        interference=interference.tolist(),
        entropy_collapse=float(rng.uniform(0.1, 0.6)),
        entropy_recovery=float(rng.uniform(0.0, 0.3)),
        entropy_sensitivity=float(rng.uniform(0.0, 0.6)),
        open_erasure=float(rng.uniform(0.0, 2.0)),
        entropy_scale=scale,
        difficulty=difficulty,
        accuracy_curve=_sigmoid(THETA[None, :, None] + difficulty[:, None, :]).mean(-1),
    )


def initial_state(world: World) -> WorldState:
    return WorldState(skill=list(world.start), fresh=[0.0] * world.K)


def train(world: World, state: WorldState, domain: int, x: float) -> None:
    """`x` phase-equivalents of training on `domain`, in place (module docstring)."""
    if x <= 0:
        return
    a, skill, fresh = domain, state.skill, state.fresh
    prev = world.K if state.previous is None else state.previous
    m = 1.0 + world.interference[prev][a]
    a_open = world.kinds[a] == "open"
    if a_open:
        m *= state.entropy**world.entropy_sensitivity
    gain = (1.0 - (1.0 - world.rate[a]) ** (x * m)) * max(world.ceiling[a] - skill[a], 0.0)
    skill[a] += gain
    fresh[a] += gain
    row = world.transfer[a]
    for b in range(world.K):
        if b == a:
            continue
        moved = skill[b] + x * row[b]
        skill[b] = min(max(moved, 0.0), max(world.ceiling[b], skill[b]))
        k = 1.0 + world.open_erasure if (world.kinds[b] == "open" and not a_open) else 1.0
        lost = fresh[b] * (1.0 - math.exp(-world.fragility[b] * k * x))
        skill[b] = max(skill[b] - lost, 0.0)
        fresh[b] -= lost
    if a_open:
        state.entropy += (1.0 - state.entropy) * (1.0 - math.exp(-world.entropy_recovery * x))
    else:
        state.entropy *= math.exp(-world.entropy_collapse * x)
    state.previous = a


def train_mixture(world: World, state: WorldState, weights: Sequence[float], x: float) -> None:
    """One step of a mixture: each domain trains its weight's share of `x`, heaviest first;
    the interference each sees is that of the previous step's heaviest domain."""
    previous = state.previous
    order = sorted(range(world.K), key=lambda d: -weights[d])
    for a in order:
        if weights[a] > 0:
            state.previous = previous
            train(world, state, a, weights[a] * x)
    state.previous = order[0]


def run_order(world: World, order: Sequence[int], x: float = 1.0) -> WorldState:
    """The state after single-domain phases in `order`, x phases each."""
    state = initial_state(world)
    for d in order:
        train(world, state, d, x)
    return state


def run_mixture(
    world: World, weights: Sequence[float], steps: int, steps_per_phase: int
) -> WorldState:
    """The state after `steps` steps of a fixed mixture."""
    state = initial_state(world)
    for _ in range(steps):
        train_mixture(world, state, weights, 1.0 / steps_per_phase)
    return state


# ---- what the scheduler sees ----------------------------------------------------------------
THETA = np.linspace(-15.0, 15.0, 1201)  # logit shifts: accuracy as a function of skill


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _item_probs(world: World, d: int, accuracy: float) -> np.ndarray:
    """Per-item success probabilities sigma(theta + b_i) whose mean is `accuracy`."""
    theta = np.interp(accuracy, world.accuracy_curve[d], THETA)
    return _sigmoid(theta + world.difficulty[d])


def evaluate(
    world: World, state: WorldState, rng: np.random.Generator, samples: int = 4
) -> tuple[dict[str, float], dict[str, float], dict[str, list[float]]]:
    """(accuracy, entropy, per-item scores) per domain, as the controller's evaluation."""
    acc, ent, items = {}, {}, {}
    for d, name in enumerate(world.names):
        p = _item_probs(world, d, float(state.skill[d]))
        scores = rng.binomial(samples, p) / samples
        items[name] = [float(v) for v in scores]
        acc[name] = float(scores.mean())
        ent[name] = float(state.entropy * world.entropy_scale[d] + rng.normal(0, 0.01))
    return acc, ent, items


def step_stats(
    world: World,
    state: WorldState,
    weights: Sequence[float],
    rng: np.random.Generator,
    prompts: int = 16,
    group: int = 8,
) -> dict[str, float]:
    """What one GRPO step reports for the domains it drew prompts from: `reward/<d>`,
    `adv_abs/<d>` (mean |advantage|, TRL-scaled) and `learner/grad_cos/<a>/<b>`."""
    counts = np.floor(np.asarray(weights) * prompts + 1e-9).astype(int)
    for d in np.argsort(-(np.asarray(weights) * prompts - counts))[: prompts - counts.sum()]:
        counts[d] += 1
    stats: dict[str, float] = {}
    present = []
    for d, n in enumerate(counts):
        if n == 0:
            continue
        present.append(d)
        p = _item_probs(world, d, float(state.skill[d]))
        k = rng.binomial(group, p[rng.integers(0, len(p), n)])  # successes per group
        # binary rewards: |A| = (1 - k/G) / (std + eps) on successes, (k/G) / (std + eps) on
        # failures, std the unbiased one: mean |A| = 2 k (G - k) / (G^2 (std + eps))
        std = np.sqrt(k * (group - k) / (group * (group - 1)))
        name = world.names[d]
        stats[f"reward/{name}"] = float(k.sum() / (n * group))
        stats[f"adv_abs/{name}"] = float((2 * k * (group - k) / (group**2 * (std + 1e-4))).mean())
    for i, a in enumerate(present):
        for b in present[i + 1 :]:
            sym = world.transfer[a][b] + world.transfer[b][a]
            cos = math.tanh(sym / 0.06) * 0.5 + rng.normal(0, 0.15)
            stats[f"learner/grad_cos/{world.names[a]}/{world.names[b]}"] = max(-1.0, min(1.0, cos))
    return stats
