"""Plots of a reproduction (matplotlib, Agg): accuracy bars, entropy over training, orders."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(out: Path, results: dict[str, Any]) -> list[Path]:
    plots = [_bars(out, results), _entropy(out, results), _orders(out, results)]
    return [p for p in plots if p is not None]


def _bars(out: Path, results: dict[str, Any]) -> Path | None:
    """Per-arm, per-domain final accuracy (and the average) with ±std error bars over seeds."""
    table = results["table"]
    if not table:
        return None
    plt = _pyplot()
    cols = [*results["domains"], "avg"]
    arms = list(table)
    width = 0.8 / len(arms)
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(cols)), 4))
    for i, arm in enumerate(arms):
        xs = [c + (i - (len(arms) - 1) / 2) * width for c in range(len(cols))]
        means = [table[arm][c]["mean"] for c in cols]
        stds = [table[arm][c]["std"] for c in cols]
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=arm)
    ax.set_xticks(range(len(cols)), cols)
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"final accuracy per arm (mean ± std over {len(results['seeds'])} seed(s))")
    ax.legend(fontsize=7, ncol=min(4, len(arms)))
    fig.tight_layout()
    path = out / "accuracy_bars.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def entropy_curves(results: dict[str, Any]) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """{arm: {domain: (x, mean entropy over seeds)}}; x = evaluation index (0 = base model).
    Merged models have two points: the base and the merge, drawn at the last phase."""
    phases = max(
        (
            len(h) - 1
            for s in results["per_seed"].values()
            for r in s.values()
            for h in r.get("entropy_history", {}).values()
        ),
        default=0,
    )
    curves: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for arm in results["table"]:
        recs = [s[arm] for s in results["per_seed"].values() if arm in s]
        if arm == "base" or not recs:
            continue
        curves[arm] = {}
        for d in results["domains"]:
            hists = [r["entropy_history"][d] for r in recs]
            n = min(len(h) for h in hists)
            ys = [sum(h[i] for h in hists) / len(hists) for i in range(n)]
            # a merge has 2 evaluations (base, merged): spread them over the phase axis
            xs = [round(i * phases / (n - 1)) for i in range(n)] if n > 1 else [0]
            curves[arm][d] = (xs, ys)
    return curves


def _entropy(out: Path, results: dict[str, Any]) -> Path | None:
    curves = entropy_curves(results)
    if not curves:
        return None
    plt = _pyplot()
    domains = results["domains"]
    fig, axes = plt.subplots(1, len(domains), figsize=(3.6 * len(domains), 3.2), squeeze=False)
    for ax, d in zip(axes[0], domains):
        for arm, per_domain in curves.items():
            xs, ys = per_domain[d]
            ax.plot(xs, ys, marker="o", label=arm)
        kind = results.get("kinds", {}).get(d, "")
        ax.set_title(f"{d} ({kind})" if kind else d)
        ax.set_xlabel("evaluation (0 = base, k = after phase k)")
    axes[0][0].set_ylabel("token entropy (nats)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    path = out / "entropy.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _orders(out: Path, results: dict[str, Any]) -> Path | None:
    """Predicted vs measured final accuracy: per domain (small) and average (large), per order."""
    points = [o for orders in results["orders"].values() for o in orders]
    if not points:
        return None
    plt = _pyplot()
    domains = results["domains"]
    fig, ax = plt.subplots(figsize=(5, 5))
    for o in points:
        pred = [o["predicted"][d] for d in domains]
        meas = [o["measured"][d] for d in domains]
        (line,) = ax.plot(pred, meas, "o", markersize=3, alpha=0.5)
        ax.plot(
            [sum(pred) / len(pred)],
            [sum(meas) / len(meas)],
            "*",
            markersize=12,
            color=line.get_color(),
            label=f"{o['arm']}: {'>'.join(o['order'])}",
        )
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted final accuracy (planner)")
    ax.set_ylabel("measured final accuracy")
    ax.set_title("per order: domains (dots), average (star)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    path = out / "orders.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
