"""Online mixture policies: every step samples prompts from all domains by weights that they
update from the step's statistics. Phases remain evaluation windows.

All three start from the uniform mixture. `bandit` and `tac` move away from it only on evidence
(a standardised score, so noise alone leaves them near uniform) and never below half, nor above
twice, the uniform weight: their cost against a uniform mixture is bounded by construction.

- `bandit`: balance the domains' learning progress, as Dynamic Weight Averaging (Liu et al.,
  2019) balances tasks. Each domain's reward is regressed on the exposure it received (the
  prompts drawn from it / prompts_per_step, cumulated; the weights where a step's statistics
  count no draws, as the simulator's) over a sliding window; the slope's z-score (slope / its
  standard error) says how surely it still improves. Domains that stall or slide (others'
  training erodes what they learned) get more weight, w_a ~ exp(-BETA * clip(z_a)). (Its
  mirror, favouring the fastest learners as learning-progress curricula do, lost to the
  uniform mixture on the simulator's development worlds by 0.3 points; this direction won by
  0.25.)
- `learnability` (the DUMP / SEC baseline, arXiv 2504.09710, 2505.14970): UCB over each
  domain's mean |advantage| (GRPO's signal vanishes when a domain's groups all tie), softmax
  with temperature; no bounds: a comparison policy, as published.
- `tac` (in the spirit of TAC, arXiv 2606.25178): gradient alignment, each domain's mean
  cosine with the others' policy gradients as the learner measures them
  (`learner/grad_cos/<a>/<b>`: domains whose updates agree with the others' transfer, those
  that conflict interfere), plus learnability (mean |advantage|, standardised across domains,
  at half weight) and `bandit`'s progress balance. Bounded as `bandit`. (Alignment plus
  learnability at full weight tied the uniform mixture on development worlds, +0.08 points
  [-0.04, 0.18]: mean |advantage| says how balanced a domain's groups are, not how fast it
  learns; with the progress balance and learnability halved it beat it, -0.19 [-0.27, -0.12].)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from omnisched.schedule.policies import POLICIES, Decision, Policy
from omnisched.schedule.state import SchedulerState

WINDOW = 40  # steps of history a slope is fitted on
BETA = 0.35  # how far a standardised score moves a weight: exp(BETA * z)
Z_CLIP = 2.0
LOW, HIGH = 0.5, 2.0  # bounds of a weight, as multiples of the uniform weight
UCB_C = 0.5  # learnability: exploration bonus scale
UCB_TEMPERATURE = 0.1  # learnability: softmax temperature over UCB scores
ALIGN_WEIGHT = 1.0  # tac: weight of gradient alignment
LEARN_WEIGHT = 0.5  # tac: weight of standardised learnability
PROGRESS_WEIGHT = 1.0  # tac: weight of bandit's progress balance (-z of the reward slope)


class MixturePolicy(Policy):
    """Shared plumbing: per-domain step history in `state.policy_state[key]`, exposure
    accounting, uniform start; subclasses turn the history into weights."""

    key = "mixture"
    name = "mixture"

    def memory(self, state: SchedulerState) -> dict[str, Any]:
        mem = state.policy_state.setdefault(self.key, {})
        mem.setdefault("weights", {d: 1.0 / len(state.domains) for d in state.domains})
        mem.setdefault("history", {d: [] for d in state.domains})  # [exposure, reward, |A|]
        mem.setdefault("exposure", dict.fromkeys(state.domains, 0.0))
        mem.setdefault("align", {})  # "a/b" -> [sum of cosines, count]
        mem.setdefault("last_step", -1)
        return mem

    def next_phase(self, state: SchedulerState) -> Decision:
        mem = self.memory(state)
        weights = self.weights(state, mem)
        mem["weights"] = weights
        mix = ", ".join(f"{d} {w:.2f}" for d, w in weights.items())
        return Decision(
            list(state.domains), f"{self.name}: {self.explain(mem)}; mixture {mix}", mixture=weights
        )

    def observe_step(
        self, state: SchedulerState, step: int, stats: dict[str, float]
    ) -> dict[str, float] | None:
        """Fold one step in (a replayed step id after a resume changes nothing); charge what it
        drew (`prompts/<d>`, else its weights) to the open phase's exposure; return the next
        step's weights."""
        if not state.phases or state.phases[-1].result is not None:
            raise RuntimeError(f"{self.name}: observe_step needs an open phase (next_phase first)")
        mem = self.memory(state)
        if step <= mem["last_step"]:
            return dict(mem["weights"])
        mem["last_step"] = step
        exposure = state.phases[-1].exposure
        drawn = drawn_exposure(stats, state.domains, self.cfg.prompts_per_step)
        for d, w in (drawn or mem["weights"]).items():  # else the weights it was drawn with
            exposure[d] = exposure.get(d, 0.0) + w
            mem["exposure"][d] += w
        for d in state.domains:
            if f"reward/{d}" in stats:
                row = [mem["exposure"][d], stats[f"reward/{d}"], stats.get(f"adv_abs/{d}", 0.0)]
                mem["history"][d] = (mem["history"][d] + [row])[-WINDOW:]
        for key, cos in stats.items():
            if key.startswith("learner/grad_cos/"):
                pair = key.removeprefix("learner/grad_cos/")
                total, n = mem["align"].get(pair, [0.0, 0])
                mem["align"][pair] = [total + cos, n + 1]
        mem["weights"] = self.weights(state, mem)
        return dict(mem["weights"])

    def weights(self, state: SchedulerState, mem: dict[str, Any]) -> dict[str, float]:
        raise NotImplementedError

    def explain(self, mem: dict[str, Any]) -> str:
        return "online mixture"


@POLICIES.register("bandit")
class BanditPolicy(MixturePolicy):
    """Balanced learning progress (more weight where it stalls), bounded around uniform."""

    key, name = "bandit", "bandit"

    def weights(self, state: SchedulerState, mem: dict[str, Any]) -> dict[str, float]:
        z = {d: progress_z(mem["history"][d]) for d in state.domains}
        return bounded_softmax({d: -BETA * v for d, v in centred(z).items()})

    def explain(self, mem: dict[str, Any]) -> str:
        z = {d: progress_z(h) for d, h in mem["history"].items()}
        return "learning-progress z " + ", ".join(f"{d} {v:+.1f}" for d, v in z.items())


@POLICIES.register("learnability")
class LearnabilityPolicy(MixturePolicy):
    """DUMP-style UCB over mean |advantage|; softmax, unbounded (a published baseline)."""

    key, name = "learnability", "learnability"

    def weights(self, state: SchedulerState, mem: dict[str, Any]) -> dict[str, float]:
        total = sum(len(h) for h in mem["history"].values())
        scores = {}
        for d in state.domains:
            h = mem["history"][d]
            if not h:
                scores[d] = 1.0 + UCB_C * math.sqrt(math.log(total + 2))  # unseen: explore
                continue
            mean_abs = sum(r[2] for r in h) / len(h)
            scores[d] = mean_abs + UCB_C * math.sqrt(math.log(total + 2) / len(h))
        return softmax({d: s / UCB_TEMPERATURE for d, s in scores.items()})


@POLICIES.register("tac")
class TransferAwarePolicy(MixturePolicy):
    """Gradient alignment with the other domains, learnability and progress balance, bounded."""

    key, name = "tac", "tac"

    def weights(self, state: SchedulerState, mem: dict[str, Any]) -> dict[str, float]:
        learn = {}
        for d in state.domains:
            h = mem["history"][d]
            learn[d] = sum(r[2] for r in h) / len(h) if h else 0.0
        spread = _sd(list(learn.values()))
        score = {d: (v / spread if spread > 0 else 0.0) for d, v in centred(learn).items()}
        align = alignment(mem["align"], state.domains)
        for d in state.domains:
            score[d] = (
                LEARN_WEIGHT * max(-Z_CLIP, min(Z_CLIP, score[d]))
                + ALIGN_WEIGHT * align.get(d, 0.0)
                - PROGRESS_WEIGHT * progress_z(mem["history"][d])
            )
        return bounded_softmax({d: BETA * v for d, v in centred(score).items()})


def drawn_exposure(
    stats: Mapping[str, float], domains: Sequence[str], prompts_per_step: int
) -> dict[str, float] | None:
    """Step-equivalents each domain got in one step: prompts drawn (`prompts/<d>`, filtered by
    dynamic sampling or not) / prompts_per_step; None when the stats count no draws."""
    if not any(f"prompts/{d}" in stats for d in domains):
        return None
    return {d: float(stats.get(f"prompts/{d}", 0.0)) / prompts_per_step for d in domains}


def alignment(pairs: Mapping[str, Sequence[float]], domains: Sequence[str]) -> dict[str, float]:
    """Each domain's mean gradient cosine with the others (0 where never measured)."""
    sums: dict[str, list[float]] = {d: [] for d in domains}
    for pair, (total, n) in pairs.items():
        a, _, b = pair.partition("/")
        if n and a in sums and b in sums:
            sums[a].append(total / n)
            sums[b].append(total / n)
    return {d: sum(v) / len(v) if v else 0.0 for d, v in sums.items()}


def progress_z(history: Sequence[Sequence[float]]) -> float:
    """z-score of the least-squares slope of reward on cumulative exposure (0 with < 4 points
    or no spread in exposure)."""
    if len(history) < 4:
        return 0.0
    xs = [r[0] for r in history]
    ys = [r[1] for r in history]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 1e-12:
        return 0.0
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    resid = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys)) / max(n - 2, 1)
    se = math.sqrt(resid / sxx) if resid > 0 else 1e-9
    return max(-Z_CLIP, min(Z_CLIP, slope / se))


def centred(scores: Mapping[str, float]) -> dict[str, float]:
    m = sum(scores.values()) / len(scores)
    return {d: v - m for d, v in scores.items()}


def softmax(scores: Mapping[str, float]) -> dict[str, float]:
    top = max(scores.values())
    e = {d: math.exp(s - top) for d, s in scores.items()}
    z = sum(e.values())
    return {d: v / z for d, v in e.items()}


def bounded_softmax(scores: Mapping[str, float]) -> dict[str, float]:
    """Weights proportional to exp(score), each kept within [LOW, HIGH] / K, summing to 1: the
    weights over a bound are fixed at it and the rest rescaled to the mass left, until none
    is out of bounds (over the upper bound first, then under the lower)."""
    k = len(scores)
    w = softmax(scores)
    lo, hi = LOW / k, HIGH / k
    fixed: dict[str, float] = {}
    free = set(w)
    while free:
        left = 1.0 - sum(fixed.values())
        total = sum(w[d] for d in free)
        scaled = {d: w[d] * left / total for d in free}
        over = [d for d in free if scaled[d] > hi]
        under = [d for d in free if scaled[d] < lo]
        if not over and not under:
            fixed.update(scaled)
            break
        for d in over or under:
            fixed[d] = hi if over else lo
            free.discard(d)
    total = sum(fixed.values())
    return {d: fixed[d] / total for d in w}


def _sd(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
