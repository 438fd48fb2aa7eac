"""Predict what a plan of phases does to every domain's accuracy, with uncertainty; pick the best.

The model (fitted from measurements by `estimate.fit`; every number an `Estimate` = mean and
variance) says, for a phase of x phase-equivalents on domain c:
- c gains the fraction 1 - (1 - gain_rate)^x of its headroom (ceiling - accuracy): training
  saturates, so what happened to c before it trains is partly erased; the gain is fresh;
- every other domain b moves by x * transfer[c][b] (transfer),
- and loses the fraction 1 - exp(-x * fragility[b][kind of c]) of its fresh skill (backward
  transfer: what b learned in its own phases is forgotten as other domains train; open-ended
  skill may be erased faster by structured training, hence one rate per trainer kind).
- the policy's entropy (relative to the baseline's) changes by the factor
  exp(x * entropy_step[kind of c]): structured RL collapses it; an open-ended domain then
  learns as if its phase were (relative entropy)^entropy_sensitivity as long (Omni-Thinker's
  premise: entropy collapse hurts open-ended learning).
So order matters: a domain whose learned skill is fragile should train late; a domain whose
training hurts others should train early, before they learn (their own training repairs part
of the harm); open-ended domains should not wait until entropy has collapsed. Plans are scored
by the predicted mean final accuracy over all domains; `plan_difference` gives the standard
deviation of the gap between two plans from the parameters' variances.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

MAX_EXHAUSTIVE = 720  # plans scored exhaustively (6 domains); beyond, a beam search
Plan = tuple[tuple[str, float], ...]  # (domain, phase-equivalents), in training order


@dataclass(frozen=True)
class Estimate:
    mean: float
    var: float = 0.0

    @property
    def sd(self) -> float:
        return self.var**0.5


@dataclass(frozen=True)
class TransferModel:
    current: Mapping[str, float]  # accuracy now
    headroom: Mapping[str, Estimate]  # ceiling - accuracy now
    transfer: Mapping[str, Mapping[str, Estimate]]  # [c][b]: a phase of c moves b
    fragility: Mapping[str, Mapping[str, Estimate]]  # [b][kind]: fresh skill lost per phase
    fresh: Mapping[str, float] = field(default_factory=dict)  # b's skill still fragile
    kinds: Mapping[str, str] = field(default_factory=dict)  # domain -> structured / open
    gain_rate: float = 0.5  # fraction of the headroom one full phase closes
    entropy: float = 1.0  # entropy now / at the baseline
    entropy_step: Mapping[str, Estimate] = field(default_factory=dict)  # [kind]: d log E / phase
    entropy_sensitivity: Estimate = Estimate(0.0)  # open learning speed ~ entropy^this
    zero: Estimate = field(default=Estimate(0.0), repr=False)

    def effect(self, c: str, b: str) -> Estimate:
        return self.transfer.get(c, {}).get(b, self.zero)

    def fragile(self, b: str, trainer: str) -> Estimate:
        return self.fragility.get(b, {}).get(self.kinds.get(trainer, "structured"), self.zero)

    def with_param(self, key: tuple, delta: float) -> TransferModel:
        """This model with one parameter's mean moved by `delta` (for sensitivities):
        ("headroom", d), ("transfer", c, b), ("fragility", b, kind), ("entropy_step", kind)
        or ("entropy_sensitivity",)."""
        if key[0] == "entropy_sensitivity":
            old = self.entropy_sensitivity
            return _replace(self, entropy_sensitivity=Estimate(old.mean + delta, old.var))
        if key[0] == "entropy_step":
            old = self.entropy_step[key[1]]
            moved = {**self.entropy_step, key[1]: Estimate(old.mean + delta, old.var)}
            return _replace(self, entropy_step=moved)
        if key[0] == "headroom":
            old = self.headroom[key[1]]
            moved = {**self.headroom, key[1]: Estimate(old.mean + delta, old.var)}
            return _replace(self, headroom=moved)
        table = {k: dict(v) for k, v in getattr(self, key[0]).items()}
        row = table.setdefault(key[1], {})
        old = row.get(key[2], self.zero)
        row[key[2]] = Estimate(old.mean + delta, old.var)
        return _replace(self, **{key[0]: table})


def _replace(model: TransferModel, **changes) -> TransferModel:
    fields = {k: getattr(model, k) for k in model.__dataclass_fields__}
    return TransferModel(**{**fields, **changes})


def as_plan(order: Iterable[str | tuple[str, float]], x: float = 1.0) -> Plan:
    return tuple(o if isinstance(o, tuple) else (o, x) for o in order)


def predict_final(
    order: Iterable[str | tuple[str, float]], model: TransferModel
) -> dict[str, float]:
    """Accuracies after training `order` (domains, or (domain, phase-equivalents) pairs) from
    `model.current` (see the module docstring); clipped to [0, 1]."""
    return _run(as_plan(order), model)[0]


def _run(plan: Plan, model: TransferModel) -> tuple[dict[str, float], dict[str, float], float]:
    """(accuracies, fresh skill, relative entropy) after `plan`."""
    acc = dict(model.current)
    fresh = {d: model.fresh.get(d, 0.0) for d in acc}
    ceiling = {d: acc[d] + model.headroom[d].mean for d in acc}
    log_entropy = math.log(max(model.entropy, 1e-6))
    for c, x in plan:
        for b in acc:
            if b == c:
                continue
            lost = fresh[b] * (1.0 - math.exp(-x * max(model.fragile(b, c).mean, 0.0)))
            fresh[b] -= lost
            acc[b] = _clip(acc[b] + x * model.effect(c, b).mean - lost)
        kind = model.kinds.get(c, "structured")
        speed = 1.0
        if kind == "open":  # learns as if its phase were entropy^sensitivity as long
            speed = math.exp(min(log_entropy, 0.0) * max(model.entropy_sensitivity.mean, 0.0))
        frac = 1.0 - (1.0 - model.gain_rate) ** (x * speed)
        gain = frac * max(ceiling[c] - acc[c], 0.0)
        log_entropy += x * model.entropy_step.get(kind, model.zero).mean
        acc[c] = _clip(acc[c] + gain)
        fresh[c] += gain
    return acc, fresh, math.exp(log_entropy)


def plan_mean(plan: Plan, model: TransferModel) -> float:
    return _mean(predict_final(plan, model).values())


def plan_difference(a: Plan, b: Plan, model: TransferModel) -> Estimate:
    """mean(a) - mean(b) and its variance: the sum over parameters of (sensitivity * sd)^2,
    each sensitivity taken by moving that parameter one sd (parameters taken independent)."""
    base = plan_mean(a, model) - plan_mean(b, model)
    var = 0.0
    for key, est in _parameters(model, a, b):
        if est.var <= 0:
            continue
        moved = model.with_param(key, est.sd)
        var += (plan_mean(a, moved) - plan_mean(b, moved) - base) ** 2
    return Estimate(base, var)


def predict_spread(plan: Plan, model: TransferModel) -> dict[str, Estimate]:
    """`predict_final` with each domain's variance from the parameters' (as `plan_difference`)."""
    base = predict_final(plan, model)
    var = dict.fromkeys(base, 0.0)
    for key, est in _parameters(model, plan, plan):
        if est.var <= 0:
            continue
        moved = predict_final(plan, model.with_param(key, est.sd))
        for d in base:
            var[d] += (moved[d] - base[d]) ** 2
    return {d: Estimate(base[d], var[d]) for d in base}


def _parameters(model: TransferModel, a: Plan, b: Plan):
    domains = {d for d, _ in a} | {d for d, _ in b}
    for d in domains:
        yield ("headroom", d), model.headroom[d]
    for c in domains:
        for victim in model.current:
            est = model.transfer.get(c, {}).get(victim)
            if victim != c and est is not None:
                yield ("transfer", c, victim), est
    for victim, by_kind in model.fragility.items():
        for kind, est in by_kind.items():
            yield ("fragility", victim, kind), est
    for kind, est in model.entropy_step.items():
        yield ("entropy_step", kind), est
    yield ("entropy_sensitivity",), model.entropy_sensitivity


def candidate_plans(domains: Sequence[str], horizon: int, x: float) -> Iterable[Plan]:
    """Every ordered choice of `horizon` distinct domains (all of them in every order when the
    horizon covers them)."""
    h = min(horizon, len(domains))
    for order in itertools.permutations(domains, h):
        yield as_plan(order, x)


def plan_order(
    domains: Sequence[str],
    model: TransferModel,
    tie_break: Mapping[str, float] | None = None,
    horizon: int | None = None,
    x: float = 1.0,
) -> tuple[list[str], dict[str, float]]:
    """The best plan of `horizon` phases (default: one per domain) over `domains`, x
    phase-equivalents each, by predicted mean final accuracy; ties go to the lower
    `tie_break` ranks first. Returns (order, predicted final accuracies)."""
    rank = tie_break or {}
    h = len(domains) if horizon is None else horizon

    def key(plan: Plan) -> tuple[float, tuple[float, ...]]:
        return (-round(plan_mean(plan, model), 9), tuple(rank.get(d, 0.0) for d, _ in plan))

    count = _count(len(domains), min(h, len(domains)))
    if count <= MAX_EXHAUSTIVE:
        best = min(candidate_plans(domains, h, x), key=key)
    else:
        best = _beam(domains, min(h, len(domains)), x, key, width=64)
    return [d for d, _ in best], predict_final(best, model)


def plan_blocks(
    blocks: Sequence[Sequence[str]],
    model: TransferModel,
    tie_break: Mapping[str, float] | None = None,
    horizon: int | None = None,
    x: float = 1.0,
) -> tuple[list[str], dict[str, float]]:
    """The best plan that trains every block's domains before the next block's (the entropy
    rule: structured, then open), truncated to `horizon` phases; blocks are planned in turn
    from the state the earlier ones are predicted to leave."""
    order: list[str] = []
    h = sum(len(b) for b in blocks) if horizon is None else horizon
    state = model
    for block in blocks:
        room = h - len(order)
        if room <= 0 or not block:
            continue
        part, _ = plan_order(block, state, tie_break, min(room, len(block)), x)
        order += part
        state = advance(state, as_plan(part, x))
    return order, predict_final(as_plan(order, x), model)


def advance(model: TransferModel, plan: Plan) -> TransferModel:
    """The model after `plan` ran as predicted: accuracies, headrooms, fresh skill, entropy."""
    acc, fresh, entropy = _run(plan, model)
    ceilings = {d: model.current[d] + model.headroom[d].mean for d in model.current}
    headroom = {d: Estimate(max(ceilings[d] - acc[d], 0.0), model.headroom[d].var) for d in acc}
    return _replace(model, current=acc, headroom=headroom, fresh=fresh, entropy=entropy)


RAMPS = (-0.5, -0.25, 0.0, 0.25, 0.5, 0.75)  # length profiles tried by `plan_lengths`


def ramp_lengths(phases: int, budget: int, ramp: float) -> list[int] | None:
    """`phases` phase lengths in steps summing to `budget`, growing linearly across the plan
    by `ramp` (0: equal; 0.5: the last three times the first; < 0: shrinking), rounded by
    largest remainders; None when a phase would get no step (never for ramp 0 with
    budget >= phases: equal lengths then differ by at most one step)."""
    if phases <= 0 or budget < phases:
        return None
    if phases == 1:
        return [budget]
    raw = [1.0 + ramp * (2 * i / (phases - 1) - 1) for i in range(phases)]
    shares = [r * budget / sum(raw) for r in raw]
    steps = [int(x) for x in shares]
    by_remainder = sorted(range(phases), key=lambda i: (steps[i] - shares[i], i))
    for i in by_remainder[: budget - sum(steps)]:
        steps[i] += 1
    return steps if min(steps) >= 1 else None


def plan_lengths(
    order: Sequence[str], model: TransferModel, budget: int, unit: int, min_steps: int = 1
) -> tuple[Plan, Plan]:
    """(the best plan of `order` over the length profiles RAMPS, the equal-length plan), both
    spending `budget` steps (`unit` steps = one phase-equivalent), no phase of the best
    shorter than `min_steps`. Forgetting makes late steps worth more than early ones and
    saturation makes a long phase worth less per step; the model weighs the two."""

    def plan(lengths: Sequence[int]) -> Plan:
        return tuple((d, n / unit) for d, n in zip(order, lengths))

    lengths = ramp_lengths(len(order), budget, 0.0)
    if lengths is None:
        raise ValueError(f"{budget} steps cannot give each of {len(order)} phases one")
    equal = plan(lengths)
    best, value = equal, plan_mean(equal, model)
    for ramp in RAMPS:
        lengths = ramp_lengths(len(order), budget, ramp)
        if ramp == 0.0 or lengths is None or min(lengths) < min_steps:
            continue
        candidate = plan(lengths)
        v = plan_mean(candidate, model)
        if v > value + 1e-9:
            best, value = candidate, v
    return best, equal


def _count(n: int, k: int) -> int:
    out = 1
    for i in range(k):
        out *= n - i
    return out


def _beam(domains: Sequence[str], h: int, x: float, key, width: int) -> Plan:
    """Beam search over prefixes, each scored as completed by the rest in the given order."""
    beams: list[Plan] = [()]
    for _ in range(h):
        grown = [(*b, (d, x)) for b in beams for d in domains if d not in {p for p, _ in b}]
        rest = lambda p: tuple((d, x) for d in domains if d not in {q for q, _ in p})  # noqa: E731
        grown.sort(key=lambda p: key((p + rest(p))[:h]))
        beams = grown[:width]
    return beams[0]


def _clip(v: float) -> float:
    return min(1.0, max(0.0, v))


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0
