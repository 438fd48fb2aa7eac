"""report.md for a run: R matrix, BWT, FWT, transfer D, entropy, forgetting, decisions, plots.

Everything is derived from the scheduler state (scheduler_state.json), so `omnisched report
RUN_DIR` regenerates the same report and plots after the run.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

from omnisched.metrics.logger import read_metrics
from omnisched.schedule.prediction import prediction_error
from omnisched.schedule.state import Evaluation, SchedulerState
from omnisched.schedule.transfer import (
    bwt_curve,
    chance_adjusted_forgetting,
    sample_forgetting,
)

CORRECT = 0.5  # an eval item counts as correct when its (avg@k) score reaches this


def write_report(run_dir: Path, state: SchedulerState, title: str = "omnisched run") -> Path:
    run_dir = Path(run_dir)
    lines = [f"# {title}", "", f"Policy: `{state.policy}`; domains: {', '.join(state.domains)}."]
    lines += ["", "## Accuracy matrix R (rows: after phase; columns: domains)", ""]
    lines += _table(state, "accuracy")
    lines += ["", "## Entropy (mean per-token, nats)", ""]
    lines += _table(state, "entropy")
    lines += _entropy_trends(state)
    lines += ["", "## Transfer", ""]
    bwt, fwt = state.bwt(), state.fwt()
    lines.append(
        f"- BWT: {_fmt(bwt)}" + ("" if bwt is not None else " (needs >= 2 single-domain phases)")
    )
    lines.append(f"- FWT: {_fmt(fwt)}")
    curve = _bwt_over_phases(state)
    if curve:
        lines.append("- BWT after each phase: " + ", ".join(f"{_fmt(b)}" for b in curve))
    lines += _own_phase_gains(state)
    lines += _transfer_matrix(state)
    lines += _forgetting(state)
    lines += _decisions(state)
    lines += _prediction_check(state)
    lines += _examples(run_dir)
    plots = [p for p in (_plot_phases(run_dir, state), _plot_heatmaps(run_dir, state)) if p]
    if plots:
        lines += ["", "## Curves", ""]
        lines += [f"![{p.stem}]({p.name})" for p in plots]
    timing = _timing(run_dir)
    if timing:
        lines += ["", "## Timing", "", *timing]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out


# ---- tables -----------------------------------------------------------------------------------
def _label(p) -> str:
    trained = "+".join(p.trained) if len(p.trained) < 3 else "joint"
    if p.mixture is not None:
        trained = "mixture"
    return f"{p.index}: {trained}" + (" (probe)" if p.probe else "")


def _rows(state: SchedulerState) -> Iterator[tuple[str, Evaluation]]:
    if state.baseline is not None:
        yield "base", state.baseline
    for p in state.completed():
        yield _label(p), p.result  # type: ignore[misc]


def _table(state: SchedulerState, field: str) -> list[str]:
    head = "| after phase | " + " | ".join(state.domains) + " | mean |"
    sep = "|---" * (len(state.domains) + 2) + "|"
    out = [head, sep]
    for label, ev in _rows(state):
        vals = [getattr(ev, field)[d] for d in state.domains]
        cells = " | ".join(f"{v:.3f}" for v in vals)
        out.append(f"| {label} | {cells} | {sum(vals) / len(vals):.3f} |")
    return out


def _entropy_trends(state: SchedulerState) -> list[str]:
    trends = state.entropy_trends()
    if not any(len(s) >= 2 for s in state.entropy_history().values()):
        return []
    out = ["", "| domain | kind | slope per phase | change from baseline |", "|---|---|---|---|"]
    for d, t in trends.items():
        rel = t["relative_change"]
        rel_s = "n/a" if rel is None else f"{rel:+.1%}"
        out.append(f"| {d} | {state.kinds.get(d, '?')} | {t['slope']:+.4f} | {rel_s} |")
    return out


def _bwt_over_phases(state: SchedulerState) -> list[float]:
    R = state.R_trained_order()
    return bwt_curve(R) if R else []


def _own_phase_gains(state: SchedulerState) -> list[str]:
    out = []
    prev = state.baseline
    for p in state.completed():
        if len(p.trained) == 1 and prev is not None:
            d = p.trained[0]
            before, after = prev.accuracy[d], p.result.accuracy[d]  # type: ignore[union-attr]
            out.append(
                f"- phase {p.index} on {d}: {before:.3f} -> {after:.3f} ({after - before:+.3f})"
            )
        prev = p.result
    return out


def _transfer_matrix(state: SchedulerState) -> list[str]:
    D = state.transfer_matrix()
    if not D:
        return []
    out = [
        "",
        "Pairwise transfer D[a][b]: mean change of b's accuracy over a phase that trained a alone "
        "(diagonal: own gain; probes not rescaled here):",
        "",
        "| trained a \\ b | " + " | ".join(state.domains) + " |",
        "|---" * (len(state.domains) + 1) + "|",
    ]
    for a in state.domains:
        if a in D:
            out.append(f"| {a} | " + " | ".join(f"{D[a][b]:+.3f}" for b in state.domains) + " |")
    return out


def _binary(scores: list[float]) -> list[int]:
    return [int(x >= CORRECT) for x in scores]


def _forgetting(state: SchedulerState) -> list[str]:
    first, last = state.baseline, state.current()
    if first is None or last is None or first is last:
        return []
    out = [
        "",
        f"Sample-wise transitions, base -> final (item correct = score >= {CORRECT}); "
        "chance-adjusted for multiple-choice domains (k options, guess rate 1/k):",
        "",
        "| domain | items | forgotten 1->0 | gained 0->1 | forgotten (adj.) | gained (adj.) |",
        "|---|---|---|---|---|---|",
    ]
    for d in state.domains:
        a, b = first.items.get(d), last.items.get(d)
        if not (a and b and len(a) == len(b)):
            continue
        t = sample_forgetting(_binary(a), _binary(b))
        adj = ["n/a", "n/a"]
        if d in state.choices:
            c = chance_adjusted_forgetting(_binary(a), _binary(b), state.choices[d])
            adj = [f"{c['forgotten']:.1f}", f"{c['gained']:.1f}"]
        out.append(
            f"| {d} | {t['items']} | {t['forgotten']} | {t['gained']} | {adj[0]} | {adj[1]} |"
        )
    out += _forgetting_per_phase(state)
    return out


def _forgetting_per_phase(state: SchedulerState) -> list[str]:
    """forgotten/gained per domain across each phase: where the forgetting happened."""
    rows = list(_rows(state))
    if len(rows) < 3:
        return []
    out = ["", "Per phase (forgotten/gained):", ""]
    out += [
        "| phase | " + " | ".join(state.domains) + " |",
        "|---" * (len(state.domains) + 1) + "|",
    ]
    for (_, prev), (label, ev) in itertools.pairwise(rows):
        cells = []
        for d in state.domains:
            a, b = prev.items.get(d), ev.items.get(d)
            if a and b and len(a) == len(b):
                t = sample_forgetting(_binary(a), _binary(b))
                cells.append(f"{t['forgotten']}/{t['gained']}")
            else:
                cells.append("n/a")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


def _decisions(state: SchedulerState) -> list[str]:
    out = ["", "## Decisions", ""]
    trained = [p.trained[0] for p in state.phases if len(p.trained) == 1 and not p.probe]
    if trained:
        out.append(f"Chosen order: {' -> '.join(trained)}")
        out.append("")
    for p in state.phases:
        kind = "probe on" if p.probe else "trained"
        out.append(
            f"- phase {p.index}: {kind} {', '.join(p.trained)} ({p.steps} steps): {p.reason}"
        )
        if p.planned_order:
            out.append(f"  - planned order: {' -> '.join(p.planned_order)}")
        if p.predicted_final:
            sd = p.predicted_sd or {}
            pred = ", ".join(
                f"{d} {v:.3f}" + (f" +- {sd[d]:.3f}" if d in sd else "")
                for d, v in p.predicted_final.items()
            )
            out.append(f"  - predicted final accuracy: {pred}")
            if sd and max(sd.values()) > 0.1:
                out.append(
                    "  - (uncertain: a prediction this wide says little; it comes mostly "
                    "from priors, not from measurements)"
                )
        if p.mixture:
            mix = ", ".join(f"{d} {w:.2f}" for d, w in p.mixture.items())
            out.append(f"  - last sampling mixture: {mix}")
    return out


def _prediction_check(state: SchedulerState) -> list[str]:
    """Each decision's predicted final accuracies next to the last measured ones, with MAE."""
    preds = [p for p in state.phases if p.predicted_final]
    last = state.current()
    if not preds or last is None or not state.completed():
        return []
    heads = [f"predicted at phase {p.index}" for p in preds]
    out = [
        "",
        "## Prediction check",
        "",
        f"Planner predictions vs measured accuracy after phase {state.completed()[-1].index}:",
        "",
        "| domain | " + " | ".join(heads) + " | measured |",
        "|---" * (len(preds) + 2) + "|",
    ]
    for d in state.domains:
        cells = [f"{p.predicted_final[d]:.3f}" if d in p.predicted_final else "n/a" for p in preds]  # type: ignore[index,operator]
        out.append(f"| {d} | " + " | ".join(cells) + f" | {last.accuracy[d]:.3f} |")
    maes = [prediction_error(p.predicted_final, last.accuracy)["mae"] for p in preds]  # type: ignore[arg-type]
    out.append("| MAE | " + " | ".join(f"{m:.3f}" for m in maes) + " | |")
    return out


def _examples(run_dir: Path) -> list[str]:
    """A few logged training groups per domain (rollouts.jsonl): the prompt as the engine got
    it, the best and the worst completion with their rewards and why the worst fell short."""
    from omnisched.metrics.rollouts import FILE, read_examples

    examples = read_examples(run_dir, per_domain=1)
    if not examples:
        return []
    out = ["", "## Example rollouts", "", f"The latest logged group per domain; all in `{FILE}`."]
    for domain, recs in examples.items():
        for rec in recs:
            ranked = sorted(rec["completions"], key=lambda c: c["reward"])
            worst, best = ranked[0], ranked[-1]
            out += [
                "",
                f"**{domain}** (step {rec['step']}, group `{rec['group_id']}`)",
                "",
                "```text",
                rec["prompt"][-400:],
                "```",
                f"- best ({best['reward']:.2f}, advantage {best['advantage']:+.2f}): "
                f"`{_short(best['text'])}`",
                f"- worst ({worst['reward']:.2f}, advantage {worst['advantage']:+.2f}): "
                f"`{_short(worst['text'])}`" + (f" ({worst['reason']})" if worst["reason"] else ""),
            ]
    return out


def _short(text: str, n: int = 160) -> str:
    flat = " ".join(text.split()).replace("`", "'")
    return flat if len(flat) <= n else flat[: n - 3] + "..."


def _timing(run_dir: Path) -> list[str]:
    rows = read_metrics(run_dir, "timing")
    return [f"- {k}: {v:.1f} s" for r in rows for k, v in r.items() if k.endswith("_s")]


# ---- plots ------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_phases(run_dir: Path, state: SchedulerState) -> Path | None:
    """Accuracy, entropy and BWT per phase, one line per domain; each phase is labelled with
    what it trained, and the phases whose domain the planner chose against the entropy rule,
    or by its rule, are marked (O: transfer overrode the rule, R: the rule decided)."""
    rows = list(_rows(state))
    if len(rows) < 2:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for d in state.domains:
        axes[0].plot([ev.accuracy[d] for _, ev in rows], marker="o", label=d)
        axes[1].plot([ev.entropy[d] for _, ev in rows], marker="o", label=d)
    labels = [label.split(": ", 1)[-1] for label, _ in rows]
    for ax, name in zip(axes, ("held-out accuracy", "token entropy (nats)")):
        ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_xlabel("after the phase on")
        ax.set_title(name)
    marks = False
    for x, p in enumerate(state.completed(), start=1 if state.baseline else 0):
        mark = _decision_mark(p.reason)
        if mark:
            marks = True
            axes[0].annotate(mark, (x, 0.97), xycoords=("data", "axes fraction"), ha="center",
                             va="top", fontsize=9, color="darkred")  # fmt: skip
    if marks:
        axes[0].set_title("held-out accuracy (decided by: R rule, O transfer, A both)")
    axes[0].legend(fontsize=8, loc="lower left")
    curve = _bwt_over_phases(state)
    if curve:
        axes[2].plot(range(1, len(curve) + 1), curve, marker="o", color="black")
        axes[2].axhline(0.0, color="grey", linewidth=0.8)
        axes[2].set_xticks(range(1, len(curve) + 1))
    else:
        axes[2].text(0.5, 0.5, "BWT needs single-domain phases", ha="center", va="center")
    axes[2].set_xlabel("after phase")
    axes[2].set_title("BWT")
    fig.tight_layout()
    path = run_dir / "phases.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _decision_mark(reason: str) -> str:
    """Which rule decided a bwt phase: O (measured transfer overrode the entropy rule), A (the
    two agreed), R (the entropy rule decided); '' for other policies and probes."""
    if reason.startswith("bwt[transfer overrides"):
        return "O"
    if reason.startswith("bwt[transfer agrees"):
        return "A"
    return "R" if reason.startswith("bwt[entropy rule") else ""


def _plot_heatmaps(run_dir: Path, state: SchedulerState) -> Path | None:
    """Heatmaps of R (evaluation x domain) and D (trained domain x affected domain)."""
    rows = list(_rows(state))
    if len(rows) < 2:
        return None
    D = state.transfer_matrix()
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.5 * max(len(rows), 4) + 1.5))
    R = [[ev.accuracy[d] for d in state.domains] for _, ev in rows]
    _heatmap(axes[0], R, [label for label, _ in rows], state.domains, "R: accuracy", 0.0, 1.0)
    trained = [a for a in state.domains if a in D]
    if trained:
        grid = [[D[a][b] for b in state.domains] for a in trained]
        span = max(0.05, *(abs(v) for row in grid for v in row))
        _heatmap(axes[1], grid, trained, state.domains, "D[a][b]: transfer", -span, span, "RdBu")
    else:
        axes[1].text(0.5, 0.5, "D needs single-domain phases", ha="center", va="center")
        axes[1].set_axis_off()
    fig.tight_layout()
    path = run_dir / "heatmaps.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _heatmap(ax, grid, ylabels, xlabels, title, vmin, vmax, cmap="viridis") -> None:
    im = ax.imshow(grid, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(xlabels)), xlabels)
    ax.set_yticks(range(len(ylabels)), ylabels)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_title(title)
    ax.figure.colorbar(im, ax=ax)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.4f}"
