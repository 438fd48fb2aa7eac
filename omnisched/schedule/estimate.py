"""Fit the planner's `TransferModel` to what the evaluations measured, noise included.

Evaluations score fixed item sets, so every measured change has a paired standard error from
the per-item scores (`paired_variance`). Walking through the phases in order, and tracking each
domain's fresh skill (what its own phases added, less what it has since lost), a phase on
domain c gives:
- c's own change: its headroom (ceiling - accuracy), gain / (1 - (1 - gain_rate)^x), anchored
  at the accuracy measured before the phase (a probe's gain, extrapolated from a short phase,
  is shrunk toward the pooled headroom by its larger variance);
- for a domain b without fresh skill, a clean measurement of transfer[c][b] per phase;
- for a domain b with fresh skill, a measurement of its fragility under c's kind of training:
  the loss beyond what transfer[c][b] (as estimated) explains, as a fraction of the fresh skill.
Transfer entries are shrunk (empirical Bayes) toward a mean for their kind pair plus the row's
effect (how c's training moves others) and the column's (how b moves under others); entries
never measured get that prior, with its spread as their variance. Fragilities are shrunk
toward the pool of their (trainer kind, victim kind) and, before any is measured, toward
PRIOR_FRAGILITY: recent gains are assumed fragile, as continual learning finds them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from omnisched.schedule.planner import Estimate, TransferModel
from omnisched.schedule.state import Evaluation, SchedulerState

GAIN_RATE = 0.5  # assumed fraction of the headroom one full phase closes
PRIOR_FRAGILITY = Estimate(0.3, 0.25**2)  # fresh skill lost per phase of other training
PRIOR_ENTROPY_STEP = Estimate(0.0, 0.3**2)  # d log entropy per phase, before any is measured
PRIOR_ENTROPY_SENSITIVITY = Estimate(0.3, 0.3**2)  # open learning speed ~ entropy^this
FRESH_MIN = 0.02  # fresh skill below this (or 2 sd): its change measures transfer only
PRIOR_HEADROOM = Estimate(0.2, 0.15**2)  # before any domain trained: a 0.1 gain per phase
EFFECT_SD = 0.02  # prior sd of each level of a transfer entry (kind pair, row, column, own)
FALLBACK_VAR = 0.03**2  # a change's variance when the evaluation kept no per-item scores


@dataclass(frozen=True)
class Change:
    """One domain's measured change across one phase."""

    phase: int
    trainer: str | None  # the one domain the phase trained (None: a mixed phase)
    x: float  # the phase's length in full phases
    victim: str
    value: float  # accuracy after - before
    var: float
    victim_trained: bool  # the victim had been trained before this phase
    before: float
    probe: bool


def paired_variance(before: Sequence[float] | None, after: Sequence[float] | None) -> float:
    """Variance of mean(after) - mean(before) over the same items: var(d_i) / n."""
    if not before or not after or len(before) != len(after) or len(before) < 2:
        return FALLBACK_VAR
    d = [a - b for a, b in zip(after, before)]
    m = sum(d) / len(d)
    var = sum((v - m) ** 2 for v in d) / (len(d) - 1)
    return max(var / len(d), 1e-6)


def changes(state: SchedulerState, full_steps: int) -> list[Change]:
    """Every domain's change across every completed phase, with its measurement variance."""
    out: list[Change] = []
    before: Evaluation | None = state.baseline
    trained: set[str] = set()
    for p in state.completed():
        if before is None:
            break
        after = p.result
        assert after is not None
        x = (p.steps or full_steps) / full_steps
        trainer = p.trained[0] if len(p.trained) == 1 else None
        for d in state.domains:
            if d in before.accuracy and d in after.accuracy:
                var = paired_variance(before.items.get(d), after.items.get(d))
                value = after.accuracy[d] - before.accuracy[d]
                out.append(
                    Change(
                        p.index,
                        trainer,
                        x,
                        d,
                        value,
                        var,
                        d in trained,
                        before.accuracy[d],
                        p.probe,
                    )
                )
        if not p.probe:  # a probe's few steps do not make a domain trained
            trained |= set(p.trained)
        before = after
    return out


def fit(state: SchedulerState, full_steps: int, gain_rate: float = GAIN_RATE) -> TransferModel:
    """The planner's model from everything measured so far (module docstring)."""
    now = state.current()
    current = dict(now.accuracy) if now else {d: 0.0 for d in state.domains}
    seen = changes(state, full_steps)
    kinds = dict(state.kinds)
    fresh = dict.fromkeys(state.domains, 0.0)
    clean: list[Change] = []  # transfer onto domains without fresh skill
    fragile: list[tuple[Change, float]] = []  # changes of domains with fresh skill (and it)
    by_phase: dict[int, list[Change]] = defaultdict(list)
    for c in seen:
        by_phase[c.phase].append(c)
    for phase in sorted(by_phase):
        for c in by_phase[phase]:
            if c.trainer is None or c.trainer == c.victim:  # trained by this phase
                if not c.probe:  # a probe's gain is within the noise: nothing to forget
                    fresh[c.victim] += max(c.value, 0.0)
            elif fresh[c.victim] < max(FRESH_MIN, 2 * c.var**0.5):
                clean.append(c)
            else:
                fragile.append((c, fresh[c.victim]))
                fresh[c.victim] = max(fresh[c.victim] + min(c.value, 0.0), 0.0)
    transfer = _fit_table(clean, state.domains, kinds)
    fragility = _fit_fragility(fragile, transfer, state.domains, kinds)
    entropy, entropy_step = _fit_entropy(state, full_steps)
    return TransferModel(
        current=current,
        headroom=_fit_headroom(seen, current, state.domains, gain_rate),
        transfer=transfer,
        fragility=fragility,
        fresh=fresh,
        kinds=kinds,
        gain_rate=gain_rate,
        entropy=entropy,
        entropy_step=entropy_step,
        entropy_sensitivity=PRIOR_ENTROPY_SENSITIVITY,
    )


def _fit_entropy(state: SchedulerState, full_steps: int) -> tuple[float, dict[str, Estimate]]:
    """(entropy now / at the baseline, d log entropy per phase by trainer kind): the mean over
    domains of the log ratio of measured entropies, per single-domain phase, pooled per kind
    with a prior of no change."""
    base = state.baseline
    if base is None or not base.entropy:
        return 1.0, {k: PRIOR_ENTROPY_STEP for k in ("structured", "open")}
    steps: dict[str, list[tuple[float, float]]] = defaultdict(list)
    before = base
    for p in state.completed():
        after = p.result
        assert after is not None
        x = (p.steps or full_steps) / full_steps
        ratio = _mean_log_ratio(before.entropy, after.entropy)
        if len(p.trained) == 1 and ratio is not None:
            kind = state.kinds.get(p.trained[0], "structured")
            steps[kind].append((ratio / x, 0.05**2 / x**2))
        before = after
    now = state.current()
    level = _mean_log_ratio(base.entropy, now.entropy if now else base.entropy)
    out = {}
    for kind in ("structured", "open"):
        est = PRIOR_ENTROPY_STEP
        for value, var in steps.get(kind, []):
            est = _combine(est, Estimate(value, var))
        out[kind] = est
    return (math.exp(level) if level is not None else 1.0), out


def _mean_log_ratio(before: Mapping[str, float], after: Mapping[str, float]) -> float | None:
    logs = [
        math.log(after[d] / before[d])
        for d in before
        if d in after and before[d] > 0 and after[d] > 0
    ]
    return sum(logs) / len(logs) if logs else None


def _fit_fragility(
    obs: Sequence[tuple[Change, float]],
    transfer: Mapping[str, Mapping[str, Estimate]],
    domains: Sequence[str],
    kinds: Mapping[str, str],
) -> dict[str, dict[str, Estimate]]:
    """fragility[b][trainer kind]: -ln(1 - lost / fresh) / x per observation, where lost is
    the drop beyond the estimated transfer; pooled per (trainer kind, victim kind), then per
    victim, each shrunk toward its parent by the observations' variances."""
    per: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for c, fresh in obs:
        t = transfer[c.trainer][c.victim]  # type: ignore[index]
        lost = c.x * t.mean - c.value
        share = min(max(lost / fresh, 0.0), 0.9)
        phi = -math.log(1.0 - share) / c.x
        dphi = 1.0 / ((1.0 - share) * fresh * c.x)  # d phi / d lost
        var = (c.var + c.x**2 * t.var) * dphi**2
        if var < 4 * PRIOR_FRAGILITY.var:  # else it says next to nothing: leave it out
            per[(c.victim, kinds.get(c.trainer, "structured"))].append((phi, var))  # type: ignore[arg-type]
    pools: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for (b, kind), vals in per.items():
        pools[(kind, kinds.get(b, "structured"))] += vals
    out: dict[str, dict[str, Estimate]] = {}
    for b in domains:
        out[b] = {}
        for kind in ("structured", "open"):
            pool = _pooled(pools.get((kind, kinds.get(b, "structured")), []), PRIOR_FRAGILITY)
            est = pool
            for phi, var in per.get((b, kind), []):
                est = _combine(est, Estimate(phi, var))
            out[b][kind] = Estimate(max(est.mean, 0.0), est.var)
    return out


def _fit_headroom(
    seen: Sequence[Change], current: Mapping[str, float], domains: Sequence[str], rate: float
) -> dict[str, Estimate]:
    """Per domain, ceiling - accuracy now: from its own latest phase (ceiling = accuracy before
    it + gain / closed fraction), shrunk toward the pooled headroom; the pool for the others."""
    own: dict[str, tuple[float, float]] = {}  # domain -> (ceiling, var) from its latest phase
    pool: list[tuple[float, float]] = []  # (headroom at the time, var)
    for c in seen:
        if c.trainer != c.victim:
            continue
        frac = 1.0 - (1.0 - rate) ** c.x
        h, v = c.value / frac, c.var / frac**2
        pool.append((h, v))
        own[c.victim] = (c.before + h, v)
    prior = _pooled(pool, PRIOR_HEADROOM)
    out = {}
    for d in domains:
        if d in own:
            ceiling, v = own[d]
            post = _combine(Estimate(current[d] + prior.mean, prior.var), Estimate(ceiling, v))
            # the ceiling was anchored before the phase; it cannot sit below today's accuracy
            out[d] = Estimate(max(post.mean - current[d], 0.0), post.var)
        else:
            out[d] = Estimate(max(prior.mean, 0.0), prior.var)
    return out


def _pooled(obs: Sequence[tuple[float, float]], prior: Estimate) -> Estimate:
    """What a new member of a population is expected to be: the prior mean updated by the
    members' precision-weighted mean, and the population's spread (the members' variance
    beyond their measurement noise, method of moments; the prior's until 3 members)."""
    if not obs:
        return prior
    w = [1.0 / v for _, v in obs]
    m = sum(wi * h for wi, (h, _) in zip(w, obs)) / sum(w)
    mean = _combine(prior, Estimate(m, 1.0 / sum(w))).mean
    spread = prior.var
    if len(obs) >= 3:
        raw = sum((h - m) ** 2 for h, _ in obs) / (len(obs) - 1)
        spread = max(raw - sum(v for _, v in obs) / len(obs), 0.02**2)
    return Estimate(mean, spread)


def _combine(a: Estimate, b: Estimate) -> Estimate:
    """Precision-weighted combination of two independent estimates of one quantity."""
    wa, wb = 1.0 / max(a.var, 1e-12), 1.0 / max(b.var, 1e-12)
    return Estimate((wa * a.mean + wb * b.mean) / (wa + wb), 1.0 / (wa + wb))


def _fit_table(
    obs: Sequence[Change], domains: Sequence[str], kinds: Mapping[str, str]
) -> dict[str, dict[str, Estimate]]:
    """Every entry [c][b] (c != b) as kind-pair mean + row effect (c) + column effect (b) +
    the entry's own part, each a random effect of prior sd EFFECT_SD: fitted in that order,
    each level from what the earlier ones leave, weighing every measurement by its noise plus
    the variance of the levels below it (so a noisy probe moves little)."""
    per_entry: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for c in obs:
        per_entry[(c.trainer, c.victim)].append((c.value / c.x, c.var / c.x**2))  # type: ignore[index]
    entries = {k: _combine_all(v) for k, v in per_entry.items()}
    tau2 = EFFECT_SD**2

    def kind_pair(c: str, b: str) -> tuple[str, str]:
        return (kinds.get(c, "structured"), kinds.get(b, "structured"))

    def level(groups: dict, residual, below: int) -> dict:
        """Posterior mean of each group's effect: prior N(0, tau2), each member's residual
        measured with its noise plus `below` levels of tau2 still unexplained."""
        out = {}
        for g, members in groups.items():
            est = Estimate(0.0, tau2)
            for key in members:
                e = entries[key]
                est = _combine(est, Estimate(residual(key), e.var + below * tau2))
            out[g] = est.mean
        return out

    pairs: dict = defaultdict(list)
    for key in entries:
        pairs[kind_pair(*key)].append(key)
    pair = level(pairs, lambda k: entries[k].mean, 3)
    rows: dict = defaultdict(list)
    for key in entries:
        rows[key[0]].append(key)
    row = level(rows, lambda k: entries[k].mean - pair[kind_pair(*k)], 2)
    cols: dict = defaultdict(list)
    for key in entries:
        cols[key[1]].append(key)
    col = level(cols, lambda k: entries[k].mean - pair[kind_pair(*k)] - row[k[0]], 1)
    table: dict[str, dict[str, Estimate]] = {}
    for c in domains:
        table[c] = {}
        for b in domains:
            if b == c:
                continue
            mean = pair.get(kind_pair(c, b), 0.0) + row.get(c, 0.0) + col.get(b, 0.0)
            unexplained = tau2 * (
                1 + (c not in row) + (b not in col) + (kind_pair(c, b) not in pair)
            )
            prior = Estimate(mean, unexplained)
            e = entries.get((c, b))
            table[c][b] = prior if e is None else _combine(prior, e)
    return table


def _combine_all(obs: Sequence[tuple[float, float]]) -> Estimate:
    est = Estimate(obs[0][0], obs[0][1])
    for m, v in obs[1:]:
        est = _combine(est, Estimate(m, v))
    return est
