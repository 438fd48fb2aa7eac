"""report.md of a reproduction: what was measured, the table, the gains, an honest verdict."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omnisched.repro.results import CURRICULUM, GAIN_FORMULA, online_predictions


def render_report(results: dict[str, Any], plots: Sequence[Path] = ()) -> str:
    domains = results["domains"]
    lines = [
        f"# Reproduction: BWT curriculum vs joint training vs model merging "
        f"(`{results['recipe']}`)",
        "",
        f"Seeds {results['seeds']}; domains {', '.join(domains)}; "
        f"{results['schedule']['steps_per_phase']} GRPO steps per phase, "
        f"{results['schedule']['prompts_per_step']} prompts x "
        f"{results['schedule']['group_size']} completions per step"
        + (" (--quick)." if results["options"]["quick"] else "."),
        "",
        "Accuracy is the held-out score of the final model (avg@k at the eval temperature, the "
        "same eval sets and sampling seed for every arm of a seed), mean ± std over seeds.",
    ]
    lines += _table(results, domains)
    lines += _paired(results)
    lines += _gains(results)
    lines += _verdict(results, domains)
    lines += _diagnostics(results, domains)
    lines += _orders(results, domains)
    lines += _online(results)
    lines += _compute(results)
    lines += _method(results)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def _ms(cell: dict[str, float], digits: int = 3) -> str:
    return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1f}%"


def _table(results: dict[str, Any], domains: Sequence[str]) -> list[str]:
    out = ["", "## Final accuracy per arm", "", "| arm | " + " | ".join(domains) + " | avg |"]
    out.append("|---" * (len(domains) + 2) + "|")
    for arm, row in results["table"].items():
        cells = [_ms(row[d]) for d in domains] + [f"**{_ms(row['avg'])}**"]
        out.append(f"| {arm} | " + " | ".join(cells) + " |")
    return out


def _paired(results: dict[str, Any]) -> list[str]:
    """Every arm against joint training, paired by seed, with bootstrap CIs: who beats it."""
    paired = results.get("paired_vs_joint") or {}
    if not paired:
        return []
    out = [
        "",
        "## Against joint training, paired by seed",
        "",
        "Difference of all-domain averages (arm - joint) per seed; every arm of a seed shares "
        "the warm start, the eval set and the RL seed. Mean and bootstrap 95% CI over seeds.",
        "",
        "| arm | mean difference | 95% CI | seeds above joint |",
        "|---|---|---|---|",
    ]
    for arm, p in paired.items():
        lo, hi = p["ci95"]
        mark = " (beats joint)" if p["beats"] else (" (loses to joint)" if p["loses"] else "")
        out.append(
            f"| {arm} | {p['mean']:+.4f}{mark} | [{lo:+.4f}, {hi:+.4f}] | "
            f"{p['positive_seeds']}/{p['seeds']} |"
        )
    winners = [a for a, p in paired.items() if p["beats"]]
    out.append("")
    if winners:
        out.append(f"Beats joint training with a CI that excludes 0: {', '.join(winners)}.")
    else:
        out.append(
            "**No arm beats joint training with a CI that excludes 0** at this scale and "
            "number of seeds."
        )
    return out


def _gains(results: dict[str, Any]) -> list[str]:
    g = results["gains"]
    if not g:
        return []
    out = ["", "## Relative gains of the curriculum (bwt arm)", "", f"gain = {GAIN_FORMULA}", ""]
    for key, value in g.items():
        if key.startswith("curriculum_over_") and key not in (
            "curriculum_over_merging",
            "curriculum_over_joint_training",
        ):
            arm = key.removeprefix("curriculum_over_")
            w = g.get(f"wins_over_{arm}") or {}
            paired = (
                f"; better in {w['wins']}/{w['seeds']} seeds, paired difference of averages "
                f"{_ms(w['diff'], 4)}"
                if w
                else ""
            )
            out.append(f"- over {arm}: {_pct(value)}{paired}")
    if "curriculum_over_merging" in g:
        out.append(
            f"- over model merging (the better merge, {g['merging_reference']}): "
            f"{_pct(g['curriculum_over_merging'])}"
        )
    out.append("- paper (Omni-Thinker): +6.2% over joint training, +12.4% over model merging.")
    return out


def _verdict(results: dict[str, Any], domains: Sequence[str]) -> list[str]:
    g, table = results["gains"], results["table"]
    if not g or "joint" not in table:
        return []
    out = ["", "## Verdict", ""]
    for arm, label in (("joint", "joint training"), (g.get("merging_reference"), "model merging")):
        if arm is None or f"curriculum_over_{arm}" not in g:
            continue
        gain, w = g[f"curriculum_over_{arm}"], g.get(f"wins_over_{arm}") or {}
        noisy = w and w["seeds"] > 1 and abs(w["diff"]["mean"]) <= w["diff"]["std"]
        if gain is not None and gain > 0:
            text = f"- The BWT curriculum beat {label} by {_pct(gain)} on the average"
        else:
            text = f"- The BWT curriculum did **not** beat {label} ({_pct(gain)} on the average)"
        if w:
            text += f", in {w['wins']} of {w['seeds']} seeds"
        if noisy:
            text += "; the paired difference is within its seed-to-seed spread (|mean| <= std)"
        elif w and w["seeds"] == 1:
            text += "; one seed only, so no spread is known"
        out.append(text + ".")
    out += _explain(results, domains)
    return out


def _explain(results: dict[str, Any], domains: Sequence[str]) -> list[str]:
    """Point at the measurements that explain the outcome: forgetting, BWT, entropy."""
    diag, kinds, table = results["diagnostics"], results.get("kinds", {}), results["table"]
    cur = diag.get(CURRICULUM, {})
    out = []
    if "bwt" in cur:
        out.append(
            f"- BWT of the curriculum: {_ms(cur['bwt'], 4)} (negative: domains trained early "
            "lost accuracy when later domains were trained)."
        )
    forgot = sorted(
        ((d, c["mean"]) for d, c in cur.get("forgetting", {}).items() if c["mean"] > 0),
        key=lambda x: -x[1],
    )
    if forgot:
        listing = ", ".join(f"{d} {v:.3f}" for d, v in forgot)
        out.append(f"- Forgotten after their own phase (accuracy lost by the end): {listing}.")
    for d in domains:
        if kinds.get(d) != "open":
            continue
        changes = {
            a: info["entropy_change"][d]["mean"]
            for a, info in diag.items()
            if d in info.get("entropy_change", {}) and a != "base"
        }
        if changes:
            listing = ", ".join(f"{a} {v:+.3f}" for a, v in changes.items())
            out.append(f"- Entropy change of open-ended '{d}' (final - base, nats): {listing}.")
    if "joint" in table and CURRICULUM in table:
        better = [d for d in domains if table["joint"][d]["mean"] > table[CURRICULUM][d]["mean"]]
        if better:
            out.append(f"- Joint training scores higher on: {', '.join(better)}.")
    return out


def _diagnostics(results: dict[str, Any], domains: Sequence[str]) -> list[str]:
    diag = results["diagnostics"]
    out = ["", "## Transfer and entropy per arm", ""]
    out.append("| arm | BWT | " + " | ".join(f"Δentropy {d}" for d in domains) + " |")
    out.append("|---" * (len(domains) + 2) + "|")
    for arm, info in diag.items():
        bwt = _ms(info["bwt"], 4) if "bwt" in info else "n/a"
        ent = info.get("entropy_change", {})
        cells = [_ms(ent[d]) if d in ent else "n/a" for d in domains]
        out.append(f"| {arm} | {bwt} | " + " | ".join(cells) + " |")
    return out


def _orders(results: dict[str, Any], domains: Sequence[str]) -> list[str]:
    out = ["", "## Planner check: predicted vs measured final accuracy per order", ""]
    out.append(
        "Predictions are post hoc: the additive-transfer planner (`predict_final`) started from "
        "the base model's accuracies, with the transfer D and trained levels the bwt arm "
        "measured. Spearman rho (`order_rank_correlation`) ranks the orders by predicted vs "
        "measured average; over two orders (bwt's and a sequential arm's) it is ±1 by "
        "construction (`--all-orders` runs all of them)."
    )
    out += ["", "| seed | order | predicted avg | measured avg |", "|---|---|---|---|"]
    for seed, orders in results["orders"].items():
        for o in orders:
            pred = sum(o["predicted"][d] for d in domains) / len(domains)
            meas = sum(o["measured"][d] for d in domains) / len(domains)
            out.append(f"| {seed} | {' > '.join(o['order'])} | {pred:.3f} | {meas:.3f} |")
    for seed, rc in results["rank_correlation"].items():
        rho = "n/a" if rc["rho"] is None else f"{rc['rho']:+.2f}"
        out.append(f"\n- seed {seed}: rho = {rho} over {rc['orders']} orders")
    return out


def _online(results: dict[str, Any]) -> list[str]:
    online = results.get("online_prediction_mae") or {}
    if not online:
        return []
    out = ["", "## Planner's online predictions", ""]
    out.append(
        "At each phase boundary the bwt policy predicts every domain's final accuracy for the "
        "order it picks (scheduler_state.json, `predicted_final`); the error is the MAE of that "
        "prediction against the final measured accuracies, mean ± std over seeds."
    )
    depth = max(len(v) for v in online.values())
    out += ["", "| arm | " + " | ".join(f"decision {k}" for k in range(depth)) + " |"]
    out.append("|---" * (depth + 1) + "|")
    for arm, cells in online.items():
        row = [_ms(c) for c in cells] + ["n/a"] * (depth - len(cells))
        out.append(f"| {arm} | " + " | ".join(row) + " |")
    return out


def _compute(results: dict[str, Any]) -> list[str]:
    out = ["", "## Compute per arm (equal by construction, checked before running)", ""]
    out += ["| arm | GRPO steps | optimizer steps | RL samples | measured (per seed) |"]
    out.append("|---|---|---|---|---|")
    for arm, c in results["compute_planned"].items():
        meas = [
            f"{m[arm]['grpo_steps']} steps / {m[arm]['rl_samples']} samples "
            f"({m[arm]['samples_trained']} with gradient)"
            for m in results["compute_measured"].values()
            if arm in m
        ]
        out.append(
            f"| {arm} | {c['grpo_steps']} | {c['optimizer_steps']} | {c['rl_samples']} | "
            + "; ".join(meas)
            + " |"
        )
    return out


def _method(results: dict[str, Any]) -> list[str]:
    opts = results["options"]
    return [
        "",
        "## How the arms were run",
        "",
        "- base: the warm-started (SFT) model, no RL; its scores are the joint run's baseline "
        "evaluation.",
        "- joint: one phase per domain of mixed steps (every step splits its prompts evenly over "
        "all domains), the same number of steps as the curriculum.",
        "- bwt: the BWT-guided curriculum decided online, with the recipe's probes (a short "
        "phase per domain first) and planned phase lengths, all paid from the same budget of "
        "steps. reverse (when asked for): the reverse of the order the bwt arm trained, "
        "sequential policy, equal phases.",
        "- merging: one expert per domain, each trained from the same base for one phase "
        "(steps_per_phase steps on that domain only, the budget a curriculum phase gives it); "
        "the K experts together use exactly the curriculum's steps and samples. Merged by task "
        f"arithmetic (theta_base + {opts['merge_scale']:g} x sum of task vectors) and by TIES "
        f"(keep the top {opts['ties_density']:.0%} magnitudes of each task vector, elect the "
        f"sign by summed value, disjoint mean, scale {opts['merge_scale']:g}). Neither scale "
        "was tuned (tuning on the held-out sets would leak them).",
        "- Evaluation is not counted as RL compute; the curriculum and joint runs evaluate after "
        "every phase (the bwt policy uses those measurements to decide), each merge once.",
    ]


# ---- files ------------------------------------------------------------------------------------
def refresh_outputs(out: Path) -> Path:
    """Regenerate a reproduction's report.md and plots from its results.json, filling in the
    online prediction errors from the runs' scheduler states when results.json predates them."""
    from omnisched.schedule.prediction import online_prediction_mae
    from omnisched.schedule.state import SchedulerState

    out = Path(out)
    results = json.loads((out / "results.json").read_text())
    for seed, arms in results["per_seed"].items():
        for arm, rec in arms.items():
            state_path = out / f"seed-{seed}" / arm / "scheduler_state.json"
            if "online_prediction_mae" not in rec and state_path.is_file():
                state = SchedulerState.load(state_path)
                rec["online_prediction_mae"] = online_prediction_mae(state)
    per_seed = {seed: {"arms": arms} for seed, arms in results["per_seed"].items()}
    results["online_prediction_mae"] = online_predictions(per_seed)
    return write_outputs(out, results)


def write_outputs(out: Path, results: dict[str, Any]) -> Path:
    """results.json, the plots and report.md in `out`; returns the report's path."""
    from omnisched.repro.plots import write_plots

    out = Path(out)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plots = write_plots(out, results)
    path = out / "report.md"
    path.write_text(render_report(results, plots))
    return path
