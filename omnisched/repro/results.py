"""The result table in the paper's form, the relative gains, the diagnostics and report.md.

Relative gain of the curriculum over another arm, as the paper reports it: the relative
improvement of the four-domain (all-domain) average accuracy,
    gain = (avg_curriculum - avg_other) / avg_other * 100 %,
with each average the mean over seeds of the per-seed mean over domains.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from omnisched.schedule.prediction import order_rank_correlation

CURRICULUM = "bwt"
MERGES = ("merge-ta", "merge-ties")
GAIN_FORMULA = "(avg_curriculum - avg_other) / avg_other * 100, avg = mean over domains"


def mean_std(xs: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    if not xs:
        raise ValueError("mean_std of no values")
    m = sum(xs) / len(xs)
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0.0
    return {"mean": m, "std": math.sqrt(var), "n": len(xs)}


def relative_gain(curriculum: float, other: float) -> float | None:
    """(curriculum - other) / other * 100; None when `other` is 0 (undefined)."""
    return None if other == 0 else (curriculum - other) / other * 100.0


def average(accuracy: Mapping[str, float], domains: Sequence[str]) -> float:
    return sum(accuracy[d] for d in domains) / len(domains)


def arm_table(
    per_seed: Mapping[Any, Mapping[str, Any]], arms: Sequence[str], domains: Sequence[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """{arm: {domain | 'avg': mean/std over seeds}} for the arms every seed has."""
    table = {}
    for arm in arms:
        recs = [s["arms"][arm] for s in per_seed.values() if arm in s["arms"]]
        if not recs:
            continue
        row = {d: mean_std([r["accuracy"][d] for r in recs]) for d in domains}
        row["avg"] = mean_std([average(r["accuracy"], domains) for r in recs])
        table[arm] = row
    return table


def gains(
    table: Mapping[str, Mapping[str, Mapping[str, float]]],
    per_seed: Mapping[Any, Mapping[str, Any]],
    domains: Sequence[str],
) -> dict[str, Any]:
    """Relative gains of the curriculum's average over joint, each merge, the better merge
    ('merging', the conservative comparison) and the reverse order; plus per-seed wins."""
    if CURRICULUM not in table:
        return {}
    curr = table[CURRICULUM]["avg"]["mean"]
    others = [a for a in ("joint", *MERGES, "reverse", "base") if a in table]
    out: dict[str, Any] = {"formula": GAIN_FORMULA}
    for arm in others:
        out[f"curriculum_over_{arm}"] = relative_gain(curr, table[arm]["avg"]["mean"])
        out[f"wins_over_{arm}"] = _wins(per_seed, arm, domains)
    merges = [a for a in MERGES if a in table]
    if merges:
        best = max(merges, key=lambda a: table[a]["avg"]["mean"])
        out["merging_reference"] = best
        out["curriculum_over_merging"] = out[f"curriculum_over_{best}"]
    if "joint" in table:
        out["curriculum_over_joint_training"] = out["curriculum_over_joint"]
    return out


def _wins(per_seed: Mapping[Any, Mapping[str, Any]], arm: str, domains: Sequence[str]) -> dict:
    """Paired by seed: how often the curriculum's average beat `arm`'s, and the mean/std of the
    paired difference."""
    diffs = seed_differences(per_seed, CURRICULUM, arm, domains)
    if not diffs:
        return {}
    return {"wins": sum(d > 0 for d in diffs), "seeds": len(diffs), "diff": mean_std(diffs)}


def seed_differences(
    per_seed: Mapping[Any, Mapping[str, Any]], arm: str, other: str, domains: Sequence[str]
) -> list[float]:
    """`arm`'s all-domain average minus `other`'s, per seed where both ran."""
    return [
        average(s["arms"][arm]["accuracy"], domains)
        - average(s["arms"][other]["accuracy"], domains)
        for s in per_seed.values()
        if arm in s["arms"] and other in s["arms"]
    ]


def bootstrap_ci(values: Sequence[float], reps: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of `values` (resampled with replacement)."""
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choice(values) for _ in range(n)) / n for _ in range(reps))
    return means[int(0.025 * reps)], means[int(0.975 * reps) - 1]


def paired_differences(
    per_seed: Mapping[Any, Mapping[str, Any]],
    arms: Sequence[str],
    domains: Sequence[str],
    reference: str = "joint",
) -> dict[str, dict[str, Any]]:
    """Per arm: the all-domain average minus the reference arm's, paired by seed (same warm
    start, eval set and RL seed), with its mean, a bootstrap 95% CI over seeds, and how many
    seeds it was positive in. `beats` says whether the CI lies above 0."""
    out = {}
    for arm in arms:
        if arm == reference:
            continue
        diffs = seed_differences(per_seed, arm, reference, domains)
        if not diffs:
            continue
        lo, hi = bootstrap_ci(diffs) if len(diffs) > 1 else (diffs[0], diffs[0])
        out[arm] = {
            "mean": sum(diffs) / len(diffs),
            "ci95": [lo, hi],
            "positive_seeds": sum(d > 0 for d in diffs),
            "seeds": len(diffs),
            "beats": len(diffs) > 1 and lo > 0,
            "loses": len(diffs) > 1 and hi < 0,
        }
    return out


def diagnostics(
    per_seed: Mapping[Any, Mapping[str, Any]], arms: Sequence[str], domains: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per arm, over seeds: BWT, per-domain forgetting (accuracy right after the domain's own
    phase minus final) and per-domain entropy change (final minus base)."""
    out: dict[str, dict[str, Any]] = {}
    for arm in arms:
        recs = [(s, s["arms"][arm]) for s in per_seed.values() if arm in s["arms"]]
        if not recs:
            continue
        info: dict[str, Any] = {}
        bwts = [r["bwt"] for _, r in recs if r.get("bwt") is not None]
        if bwts:
            info["bwt"] = mean_std(bwts)
        levels = [r.get("level_after_own_phase") or {} for _, r in recs]
        forgetting = {
            d: mean_std([lv[d] - r["accuracy"][d] for lv, (_, r) in zip(levels, recs) if d in lv])
            for d in domains
            if all(d in lv for lv in levels)
        }
        if forgetting:
            info["forgetting"] = forgetting
        info["entropy_change"] = {
            d: mean_std([r["entropy"][d] - s["arms"]["base"]["entropy"][d] for s, r in recs])
            for d in domains
            if all("base" in s["arms"] for s, _ in recs)
        }
        out[arm] = info
    return out


def rank_correlations(per_seed: Mapping[Any, Mapping[str, Any]]) -> dict[str, Any]:
    """Spearman rho of predicted vs measured mean final accuracy across the orders run, per seed
    (None with fewer than 2 distinct orders or ties everywhere)."""
    out = {}
    for seed, s in per_seed.items():
        pairs = [(o["predicted"], o["measured"]) for o in s.get("orders", [])]
        out[str(seed)] = {"orders": len(pairs), "rho": order_rank_correlation(pairs)}
    return out


def online_predictions(per_seed: Mapping[Any, Mapping[str, Any]]) -> dict[str, list[dict]]:
    """Per arm whose policy predicted online (bwt): the MAE of the prediction made at decision
    k against the measured final accuracies, mean and std over seeds, k = 0, 1, ..."""
    out: dict[str, list[dict]] = {}
    arms = {a for s in per_seed.values() for a in s["arms"]}
    for arm in sorted(arms):
        series = [
            s["arms"][arm].get("online_prediction_mae") or []
            for s in per_seed.values()
            if arm in s["arms"]
        ]
        depth = min((len(x) for x in series), default=0)
        if depth:
            out[arm] = [mean_std([x[k] for x in series]) for k in range(depth)]
    return out


def build_results(recipe, arms, compute, per_seed, opts) -> dict[str, Any]:
    """Everything results.json holds; derived only from the per-seed records."""
    domains = [d.name for d in recipe.domains]
    names = [a.name for a in arms]
    table = arm_table(per_seed, names, domains)
    kinds = next(iter(per_seed.values()))["kinds"] if per_seed else {}
    return {
        "recipe": recipe.run.name,
        "domains": domains,
        "kinds": kinds,
        "seeds": [int(s) for s in per_seed],
        "options": {
            "quick": opts.quick,
            "all_orders": opts.all_orders,
            "merge_scale": opts.merge_scale,
            "ties_density": opts.ties_density,
        },
        "schedule": {
            "steps_per_phase": recipe.schedule.steps_per_phase,
            "prompts_per_step": recipe.schedule.prompts_per_step,
            "group_size": recipe.rollout.group_size,
        },
        "compute_planned": {a: vars(c) for a, c in compute.items()},
        "compute_measured": {
            str(seed): {a: r["measured"] for a, r in s["arms"].items()}
            for seed, s in per_seed.items()
        },
        "table": table,
        "gains": gains(table, per_seed, domains),
        "paired_vs_joint": paired_differences(per_seed, names, domains),
        "diagnostics": diagnostics(per_seed, names, domains),
        "orders": {str(seed): s.get("orders", []) for seed, s in per_seed.items()},
        "rank_correlation": rank_correlations(per_seed),
        "online_prediction_mae": online_predictions(per_seed),
        "per_seed": {str(seed): s["arms"] for seed, s in per_seed.items()},
    }
