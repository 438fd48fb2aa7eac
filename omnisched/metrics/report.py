"""report.md for a run: R matrix, BWT, FWT, entropy per domain per phase, decisions, plots."""

from __future__ import annotations

from pathlib import Path

from omnisched.metrics.logger import read_metrics
from omnisched.schedule.state import SchedulerState
from omnisched.schedule.transfer import sample_forgetting


def write_report(run_dir: Path, state: SchedulerState, title: str = "omnisched run") -> Path:
    run_dir = Path(run_dir)
    lines = [f"# {title}", "", f"Policy: `{state.policy}`; domains: {', '.join(state.domains)}."]
    lines += ["", "## Accuracy matrix R (rows: after phase; columns: domains)", ""]
    lines += _table(state, "accuracy")
    lines += ["", "## Entropy (mean per-token, nats)", ""]
    lines += _table(state, "entropy")
    lines += ["", "## Transfer", ""]
    bwt, fwt = state.bwt(), state.fwt()
    lines.append(
        f"- BWT: {_fmt(bwt)}" + ("" if bwt is not None else " (needs >= 2 single-domain phases)")
    )
    lines.append(f"- FWT: {_fmt(fwt)}")
    lines += _own_phase_gains(state)
    lines += _forgetting(state)
    lines += ["", "## Decisions", ""]
    for p in state.phases:
        lines.append(
            f"- phase {p.index}: trained {', '.join(p.trained)} ({p.steps} steps): {p.reason}"
        )
        if p.predicted_final:
            pred = ", ".join(f"{d} {v:.3f}" for d, v in p.predicted_final.items())
            lines.append(f"  - predicted final accuracy: {pred}")
    plot = _plot(run_dir, state)
    if plot:
        lines += ["", "## Curves", "", f"![accuracy and entropy per phase]({plot.name})"]
    timing = _timing(run_dir)
    if timing:
        lines += ["", "## Timing", "", *timing]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def _rows(state: SchedulerState):
    if state.baseline is not None:
        yield "base", state.baseline
    for p in state.completed():
        yield f"{p.index}: {'+'.join(p.trained) if len(p.trained) < 3 else 'joint'}", p.result


def _table(state: SchedulerState, field: str) -> list[str]:
    head = "| after phase | " + " | ".join(state.domains) + " | mean |"
    sep = "|---" * (len(state.domains) + 2) + "|"
    out = [head, sep]
    for label, ev in _rows(state):
        vals = [getattr(ev, field)[d] for d in state.domains]
        cells = " | ".join(f"{v:.3f}" for v in vals)
        out.append(f"| {label} | {cells} | {sum(vals) / len(vals):.3f} |")
    return out


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


def _forgetting(state: SchedulerState) -> list[str]:
    first, last = state.baseline, state.current()
    if first is None or last is None or first is last:
        return []
    out = ["", "Sample-wise transitions, base -> final (item correct = score >= 0.5):", ""]
    for d in state.domains:
        a, b = first.items.get(d), last.items.get(d)
        if a and b and len(a) == len(b):
            t = sample_forgetting([int(x >= 0.5) for x in a], [int(x >= 0.5) for x in b])
            out.append(f"- {d}: forgotten {t['forgotten']}, gained {t['gained']} of {t['items']}")
    return out


def _timing(run_dir: Path) -> list[str]:
    rows = read_metrics(run_dir, "timing")
    return [f"- {k}: {v:.1f} s" for r in rows for k, v in r.items() if k.endswith("_s")]


def _plot(run_dir: Path, state: SchedulerState) -> Path | None:
    rows = list(_rows(state))
    if len(rows) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for d in state.domains:
        axes[0].plot([ev.accuracy[d] for _, ev in rows], marker="o", label=d)
        axes[1].plot([ev.entropy[d] for _, ev in rows], marker="o", label=d)
    for ax, name in zip(axes, ("held-out accuracy", "token entropy (nats)")):
        ax.set_xticks(range(len(rows)), [label.split(":")[0] for label, _ in rows])
        ax.set_xlabel("after phase")
        ax.set_title(name)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = run_dir / "phases.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.4f}"
