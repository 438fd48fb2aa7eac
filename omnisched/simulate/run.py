"""Run the arena over many worlds (in parallel processes) and format what it found."""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence

from omnisched.errors import ConfigError
from omnisched.simulate.arena import DEFAULT_ARMS, Arm, Outcome, Summary, fmt, play, summarise

# single-domain phases: judged against a random order
PHASED = ("bwt", "bwt-no-probes", "bwt-equal-lengths", "structured-first")
ONLINE = ("bandit", "tac", "learnability")  # mixtures: vs the uniform mixture


def pick_arms(names: Sequence[str] | None) -> list[Arm]:
    """The default arms, or those named (one line naming the unknown ones)."""
    if not names:
        return list(DEFAULT_ARMS)
    known = {a.name: a for a in DEFAULT_ARMS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"--arms: unknown arm(s) {unknown}; known: {', '.join(known)}")
    return [known[n] for n in names]


def _play(job: tuple[int, list[Arm], int, bool]) -> Outcome:
    seed, arms, steps, agreement = job
    return play(seed, arms, steps, agreement)


def run_arena(
    worlds: int,
    arm_names: Sequence[str] | None = None,
    seed: int = 0,
    processes: int = 1,
    steps_per_phase: int = 20,
    agreement: bool = True,
) -> tuple[Summary, list[Outcome], list[Arm]]:
    """`worlds` worlds (seeds seed .. seed + worlds - 1), every arm on each; the summary."""
    arms = pick_arms(arm_names)
    jobs = [(seed + i, arms, steps_per_phase, agreement) for i in range(worlds)]
    if processes > 1:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            outcomes = pool.map(_play, jobs, chunksize=4)
    else:
        outcomes = [_play(j) for j in jobs]
    return summarise(outcomes, [a.name for a in arms]), outcomes, arms


def table(s: Summary) -> str:
    """The summary as text: one row per arm and baseline."""
    lines = [
        f"{s.worlds} worlds ({s.structured_first_wrong} where structured-first is wrong); "
        "points of mean accuracy, mean [95% CI]",
        f"{'arm':20s} {'regret':>22s} {'/ random order':>22s} {'- uniform':>22s} {'steps':>6s}",
    ]
    for name, reg in s.regret.items():
        ratio = fmt(s.ratio_to_random[name]) if name in s.ratio_to_random else ""
        vs = fmt(s.vs_uniform[name]) if name in s.vs_uniform else ""
        steps = f"{s.steps[name]:.0f}" if name in s.steps else ""
        lines.append(f"{name:20s} {fmt(reg):>22s} {ratio:>22s} {vs:>22s} {steps:>6s}")
    for subset, rows in s.subset.items():
        lines.append(f"-- regret where {subset}:")
        lines += [f"   {name:17s} {fmt(v):>22s}" for name, v in rows.items()]
    for name, per in s.mae_by_decision.items():
        maes = ", ".join(fmt(v, 1) for v in per)
        lines.append(f"-- {name}: prediction MAE per decision (points): {maes}")
    for name, per in s.rank_corr.items():
        rhos = ", ".join(fmt(v) for v in per)
        lines.append(f"-- {name}: predicted vs true order ranks (Spearman) per plan: {rhos}")
    return "\n".join(lines)
