"""`bandit`: a transfer-aware online mixture over domains, reweighted every step.

Beyond the paper's fixed phases: every step samples prompts from all domains with weights
    w = (1 - FLOOR) * softmax(score / TEMPERATURE) + FLOOR / K          (EXP3-style floor)
    score_a = 4 p_a (1 - p_a)                  learnability: GRPO's signal vanishes at p = 0 or 1
            + PROGRESS * |fast_a - slow_a|     recent reward change (learning progress)
            + transfer_a                       what a phase's worth of a gives the other domains
            + EXPLORE * sqrt(ln(1 + t) / (1 + n_a))    UCB bonus for little-trained domains
p_a is a short-horizon EMA of a's per-step mean reward, n_a the step-equivalents a was trained.
transfer_a is re-fitted at every phase boundary from the evaluations by ridge regression of
each phase's accuracy changes on its per-domain exposure (transfer.transfer_rates).
Phases stay as evaluation windows; the schedule inside them is online.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from omnisched.config.schema import ScheduleConfig
from omnisched.schedule.policies import POLICIES, Decision
from omnisched.schedule.state import BanditState, PhaseRecord, SchedulerState
from omnisched.schedule.transfer import phase_deltas, transfer_rates

FAST, SLOW = 0.3, 0.05  # EMA rates of the per-step reward: short and long horizon
PROGRESS = 4.0  # weight of learning progress against learnability (both ~[0, 1] after scaling)
EXPLORE = 0.3  # UCB bonus scale
TEMPERATURE = 0.2  # softmax temperature over scores
FLOOR = 0.05  # weight spread uniformly so that every domain's reward stays observed
RIDGE = 1.0  # pulls transfer rates of never-separated domains towards 0


def arm_scores(
    bandit: BanditState, pulls: Mapping[str, float], domains: Sequence[str]
) -> dict[str, float]:
    """The score of every domain (module docstring); an unobserved domain is fully learnable."""
    t = sum(pulls.values())
    out = {}
    for d in domains:
        p = bandit.fast.get(d)
        learnability = 1.0 if p is None else 4 * p * (1 - p)
        progress = abs(bandit.fast[d] - bandit.slow[d]) if p is not None else 0.0
        explore = EXPLORE * math.sqrt(math.log(1 + t) / (1 + pulls.get(d, 0.0)))
        out[d] = learnability + PROGRESS * progress + bandit.transfer.get(d, 0.0) + explore
    return out


def mixture_weights(scores: Mapping[str, float]) -> dict[str, float]:
    """w = (1 - FLOOR) softmax(score / TEMPERATURE) + FLOOR / K, summing to 1."""
    top = max(scores.values())
    e = {d: math.exp((s - top) / TEMPERATURE) for d, s in scores.items()}
    z = sum(e.values())
    return {d: (1 - FLOOR) * v / z + FLOOR / len(scores) for d, v in e.items()}


def update_rewards(bandit: BanditState, rewards: Mapping[str, float]) -> None:
    """EMA update with this step's mean reward per domain (a first observation sets both)."""
    for d, r in rewards.items():
        if d not in bandit.fast:
            bandit.fast[d] = bandit.slow[d] = r
        else:
            bandit.fast[d] += FAST * (r - bandit.fast[d])
            bandit.slow[d] += SLOW * (r - bandit.slow[d])


def transfer_bonus(state: SchedulerState, phase_steps: int) -> dict[str, float]:
    """transfer_a = clip(phase_steps * sum_{b != a} rate[a][b], -1, 1) from the evaluations."""
    done = state.completed()
    if state.baseline is None or not done:
        return {}
    exposures, deltas, before = [], [], state.baseline.accuracy
    for p in done:
        exposures.append(phase_exposure(p))
        deltas.append(phase_deltas(before, p.result.accuracy))  # type: ignore[union-attr]
        before = p.result.accuracy  # type: ignore[union-attr]
    rates = transfer_rates(exposures, deltas, state.domains, RIDGE)
    return {
        a: max(-1.0, min(1.0, phase_steps * sum(v for b, v in rates[a].items() if b != a)))
        for a in state.domains
    }


def phase_exposure(p: PhaseRecord) -> dict[str, float]:
    """Step-equivalents per domain: recorded per step, else the phase's steps split evenly."""
    return p.exposure or {d: p.steps / len(p.trained) for d in p.trained}


def total_pulls(state: SchedulerState) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in state.phases:
        for d, n in phase_exposure(p).items():
            out[d] = out.get(d, 0.0) + n
    return out


@POLICIES.register("bandit")
class BanditPolicy:
    """Transfer-aware UCB mixture over domains, updated from every step's rewards."""

    def __init__(self, cfg: ScheduleConfig) -> None:
        self.cfg = cfg

    def next_phase(self, state: SchedulerState) -> Decision:
        if state.bandit is None:
            state.bandit = BanditState(weights={d: 1 / len(state.domains) for d in state.domains})
        state.bandit.transfer = transfer_bonus(state, self.cfg.steps_per_phase)
        scores = arm_scores(state.bandit, total_pulls(state), state.domains)
        state.bandit.weights = mixture_weights(scores)
        mix = ", ".join(f"{d} {w:.2f}" for d, w in state.bandit.weights.items())
        transfer = ", ".join(f"{d} {v:+.2f}" for d, v in state.bandit.transfer.items()) or "none"
        reason = f"bandit: per-step mixture {mix}; measured transfer bonus {transfer}"
        return Decision(list(state.domains), reason, mixture=dict(state.bandit.weights))

    def observe_step(
        self, state: SchedulerState, step: int, stats: Mapping[str, float]
    ) -> dict[str, float]:
        """Fold one step's rewards in and charge the step to the open phase's exposure; returns
        the weights for the next step. Only `reward/<domain>` keys are read (a domain absent
        from the step keeps its estimate). A step id already seen (a replay after resume)
        changes nothing."""
        bandit = state.bandit
        if bandit is None or not state.phases or state.phases[-1].result is not None:
            raise RuntimeError("bandit: observe_step needs an open phase (call next_phase first)")
        if step <= bandit.last_step:
            return dict(bandit.weights)
        exposure = state.phases[-1].exposure
        for d, w in bandit.weights.items():  # the weights this step was drawn with
            exposure[d] = exposure.get(d, 0.0) + w
        rewards = {d: float(stats[f"reward/{d}"]) for d in state.domains if f"reward/{d}" in stats}
        update_rewards(bandit, rewards)
        bandit.steps += 1
        bandit.last_step = step
        bandit.weights = mixture_weights(arm_scores(bandit, total_pulls(state), state.domains))
        return dict(bandit.weights)
