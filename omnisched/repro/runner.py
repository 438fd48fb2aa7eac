"""Run every arm of the comparison for every seed, merge the experts, collect the results.

Layout: OUT/seed-<s>/<run>/ is one Controller run directory (joint, bwt, reverse, expert-<d>,
order-...), OUT/seed-<s>/merge-ta|merge-ties/ holds the merged model (model/) and its
evaluation. A run directory that already finished is reused and an unfinished one is resumed,
so an interrupted reproduction continues where it stopped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omnisched.config.load import validate_recipe
from omnisched.config.schema import Recipe
from omnisched.domains import build_domains
from omnisched.errors import ConfigError
from omnisched.metrics.logger import read_metrics
from omnisched.repro.arms import (
    ArmSpec,
    RunSpec,
    arm_compute,
    check_equal_compute,
    plan_arms,
)
from omnisched.schedule.estimate import fit
from omnisched.schedule.planner import Estimate, predict_final
from omnisched.schedule.prediction import online_prediction_mae
from omnisched.schedule.state import Evaluation, SchedulerState

log = logging.getLogger(__name__)
Say = Callable[[str], None]


@dataclass(frozen=True)
class ReproOptions:
    seeds: int = 5
    quick: bool = False
    all_orders: bool = False
    merge_scale: float = 1.0  # lambda of task arithmetic and TIES
    ties_density: float = 0.2  # fraction of each task vector TIES keeps
    arms: tuple[str, ...] | None = None  # a subset of the arms (base and joint always run)


# ---- recipes ----------------------------------------------------------------------------------
def quick_recipe(recipe: Recipe) -> Recipe:
    """--quick: a third of the steps per phase (at least 1); the seed count is set by the caller."""
    data = recipe.model_dump(mode="json")
    data["schedule"]["steps_per_phase"] = max(1, recipe.schedule.steps_per_phase // 3)
    return validate_recipe(data, source="--quick")


def run_recipe(recipe: Recipe, run: RunSpec, seed: int, order: Sequence[str] | None) -> Recipe:
    """The recipe of one run: its policy, order, phase count and RL seed. The data seed stays
    the recipe's, so every run shares one warm start and one eval set; probe phases stay on
    for the bwt arm only (they are paid from its own phases' steps)."""
    data = recipe.model_dump(mode="json")
    data["run"]["seed"] = seed
    data["run"]["data_seed"] = recipe.data_seed
    data["run"]["name"] = f"{recipe.run.name}-{run.name}-s{seed}"
    data["schedule"].update(
        policy=run.policy,
        order=list(order) if order is not None else None,
        phases=run.phases,
        probe_steps=recipe.schedule.probe_steps if run.policy == "bwt" else 0,
    )
    return validate_recipe(data, source=f"run {run.name}")


# ---- one Controller run -----------------------------------------------------------------------
def _finished(run_dir: Path) -> bool:
    state_path = run_dir / "scheduler_state.json"
    if not (state_path.is_file() and (run_dir / "checkpoints/final/config.json").is_file()):
        return False
    state = SchedulerState.load(state_path)
    return len(state.completed()) == state.total_phases and (run_dir / "report.md").is_file()


def _forward(say: Say, prefix: str) -> Callable[[str, dict[str, Any]], None]:
    """Controller progress events -> one line per phase and evaluation."""

    def progress(event: str, info: dict[str, Any]) -> None:
        if event == "phase":
            trained = "+".join(info["domains"])
            say(f"{prefix}: phase {info['index'] + 1}/{info['total']} on {trained}")
        elif event == "eval":
            acc = ", ".join(f"{d} {a:.3f}" for d, a in info["accuracy"].items())
            say(f"{prefix}: eval {info['label']}: {acc}")
        elif event == "warm_start":
            say(f"{prefix}: warm start (SFT) on {info['examples']} demonstrations")

    return progress


def train(recipe: Recipe, run_dir: Path, say: Say) -> SchedulerState:
    """Run (or resume, or reuse) one Controller run; its final scheduler state."""
    from omnisched.orchestration.controller import Controller

    if _finished(run_dir):
        say(f"{run_dir.name}: already finished, reused")
    else:
        resume = run_dir.exists()
        Controller(recipe, run_dir, progress=_forward(say, run_dir.name), resume=resume).run()
    return SchedulerState.load(run_dir / "scheduler_state.json")


def evaluate_model(recipe: Recipe, model_dir: Path, out_dir: Path, label: str) -> Evaluation:
    """Evaluate an HF model folder on every domain's held-out set exactly as a run does (same
    seed => same eval sets and sampling seed as the trained arms); no learner is started."""
    from omnisched.orchestration.evaluator import evaluate_folder

    data = recipe.model_dump(mode="json")
    data["model"]["path"] = str(model_dir)
    return evaluate_folder(
        validate_recipe(data, source=f"evaluate {model_dir}"), model_dir, out_dir, label
    )


def base_model_folder(recipe: Recipe, scratch: Path) -> Path:
    """The warm-started model folder of this seed. Called after a run of the same seed, so the
    SFT cache hits and no training happens (on a miss SFT would run inline, in this process)."""
    from omnisched.orchestration import sft
    from omnisched.orchestration.backend import InlineBackend

    domains = build_domains(recipe)
    scratch.mkdir(parents=True, exist_ok=True)
    return Path(sft.warm_start(recipe, domains, InlineBackend(), scratch))


def write_merge(
    base_dir: Path, expert_dirs: Sequence[Path], out_dir: Path, method: str, opts: ReproOptions
) -> Path:
    """Merge the experts into the base (task arithmetic or TIES) and save an HF folder."""
    from omnisched.model import load_model, save_model
    from omnisched.repro import merge

    model, tokenizer = load_model(base_dir, dtype="float32")
    base = model.state_dict()
    unique = _untied_keys(base)
    experts = [load_model(d, dtype="float32")[0].state_dict() for d in expert_dirs]
    base_u = {k: base[k] for k in unique}
    experts_u = [{k: sd[k] for k in unique} for sd in experts]
    if method == "ta":
        merged = merge.task_arithmetic(base_u, experts_u, opts.merge_scale)
    else:
        merged = merge.ties_merge(base_u, experts_u, opts.ties_density, opts.merge_scale)
    missing, unexpected = model.load_state_dict(merged, strict=False)
    tied = set(base) - set(unique)  # tied copies follow their source tensor
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"merged state dict does not fit the model: {missing} {unexpected}")
    return save_model(model, tokenizer, out_dir)


def _untied_keys(state: dict[str, Any]) -> list[str]:
    """Keys of distinct tensors (tied embeddings appear twice in a state dict; TIES's global
    top-k must not count them twice)."""
    seen, keys = set(), []
    for k, v in state.items():
        if v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            keys.append(k)
    return keys


# ---- per-arm records --------------------------------------------------------------------------
def measured_compute(run_dirs: Sequence[Path], domains: Sequence[str], group: int) -> dict:
    """What the runs actually did, from metrics.jsonl: GRPO steps, RL samples generated and
    samples that carried a gradient (groups whose rewards all tie carry none)."""
    rows = [r for d in run_dirs for r in read_metrics(d, "train")]
    return {
        "grpo_steps": len(rows),
        "rl_samples": sum(r.get(f"prompts/{d}", 0) for r in rows for d in domains) * group,
        "samples_trained": sum(int(r.get("samples_trained", 0)) for r in rows),
    }


def run_record(state: SchedulerState, run_dir: Path, group: int) -> dict[str, Any]:
    """Final accuracy/entropy of a curriculum or joint run, with its transfer measurements."""
    final = state.current()
    assert final is not None and state.baseline is not None
    level = {
        p.trained[0]: p.result.accuracy[p.trained[0]]
        for p in state.completed()
        if len(p.trained) == 1
    }  # type: ignore[union-attr]
    return {
        "accuracy": dict(final.accuracy),
        "entropy": dict(final.entropy),
        "entropy_history": state.entropy_history(),
        "order": state.training_order(),
        "bwt": state.bwt(),
        "fwt": state.fwt(),
        "level_after_own_phase": level,
        "online_prediction_mae": online_prediction_mae(state),
        "measured": measured_compute([run_dir], state.domains, group),
        "runs": [run_dir.name],
    }


def predicted_orders(
    bwt_state: SchedulerState, orders: Sequence[Sequence[str]], steps_per_phase: int
) -> list[dict[str, float]]:
    """Post-hoc planner predictions for whole orders started from the base model: the model
    fitted to everything the bwt arm measured (`estimate.fit`), rewound to the baseline's
    accuracies, with no fresh skill and the baseline's entropy."""
    fitted = fit(bwt_state, steps_per_phase)
    assert bwt_state.baseline is not None
    base = dict(bwt_state.baseline.accuracy)
    ceilings = {d: fitted.current[d] + fitted.headroom[d].mean for d in base}
    headroom = {d: Estimate(max(ceilings[d] - base[d], 0.0), fitted.headroom[d].var) for d in base}
    model = replace(fitted, current=base, headroom=headroom, fresh={}, entropy=1.0)
    return [predict_final(order, model) for order in orders]


# ---- one seed ---------------------------------------------------------------------------------
def run_seed(
    recipe: Recipe, seed: int, arms: Sequence[ArmSpec], out: Path, opts: ReproOptions, say: Say
) -> dict[str, Any]:
    """Every arm for one seed: {'arms': {arm: record}, 'orders': predicted vs measured final
    accuracy per trained order, 'kinds': domain kinds (structured / open)}."""
    domains = [d.name for d in recipe.domains]
    group = recipe.rollout.group_size
    out.mkdir(parents=True, exist_ok=True)
    states: dict[str, SchedulerState] = {}
    by_order: dict[tuple[str, ...], str] = {}
    records: dict[str, Any] = {}
    for arm in arms:
        if arm.final != "run":
            continue
        run = arm.runs[0]
        order = run.order
        if run.reverse_of is not None:
            trained = states[run.reverse_of].training_order()
            assert trained is not None, f"{run.reverse_of} did not train one domain per phase"
            order = tuple(reversed(trained))
        if order is not None and tuple(order) in by_order and run.name.startswith("order-"):
            records[arm.name] = {**records[by_order[tuple(order)]], "reused_from": by_order[order]}
            continue
        say(f"seed {seed}: arm {arm.name}")
        state = train(run_recipe(recipe, run, seed, order), out / run.name, say)
        states[arm.name] = state
        records[arm.name] = run_record(state, out / run.name, group)
        if run.policy == "sequential" and state.training_order():  # plain equal phases only
            by_order.setdefault(tuple(state.training_order()), arm.name)  # type: ignore[arg-type]
    base_eval = states["joint"].baseline
    assert base_eval is not None
    records["base"] = {
        "accuracy": dict(base_eval.accuracy),
        "entropy": dict(base_eval.entropy),
        "entropy_history": {d: [base_eval.entropy[d]] for d in domains},
        "measured": {"grpo_steps": 0, "rl_samples": 0, "samples_trained": 0},
        "runs": ["joint (baseline evaluation)"],
    }
    records.update(_merge_arms(recipe, seed, arms, out, opts, say, base_eval))
    return {
        "arms": records,
        "orders": _order_check(recipe, states, records),
        "kinds": dict(states["joint"].kinds),
    }


def _merge_arms(recipe, seed, arms, out, opts, say, base_eval: Evaluation) -> dict[str, Any]:
    domains = [d.name for d in recipe.domains]
    merges = [a for a in arms if a.final in ("ta", "ties")]
    expert_dirs: dict[str, Path] = {}
    for run in {r.name: r for a in merges for r in a.runs}.values():
        say(f"seed {seed}: {run.name}")
        train(run_recipe(recipe, run, seed, run.order), out / run.name, say)
        expert_dirs[run.name] = out / run.name
    if not merges:
        return {}
    base_dir = base_model_folder(
        run_recipe(recipe, merges[0].runs[0], seed, merges[0].runs[0].order), out / "_base"
    )
    records = {}
    for arm in merges:
        arm_dir = out / arm.name
        result_path = arm_dir / "evaluation.json"
        runs = [expert_dirs[r.name] for r in arm.runs]
        if result_path.is_file():
            evaluation = Evaluation(**json.loads(result_path.read_text()))
        else:
            say(f"seed {seed}: merging {len(runs)} experts ({arm.final}) and evaluating")
            model_dir = write_merge(
                base_dir,
                [r / "checkpoints/final" for r in runs],
                arm_dir / "model",
                arm.final,
                opts,
            )
            eval_recipe = run_recipe(recipe, arm.runs[0], seed, arm.runs[0].order)
            evaluation = evaluate_model(eval_recipe, model_dir, arm_dir, arm.name)
            result_path.write_text(json.dumps(evaluation.__dict__, indent=1))
        records[arm.name] = {
            "accuracy": dict(evaluation.accuracy),
            "entropy": dict(evaluation.entropy),
            "entropy_history": {d: [base_eval.entropy[d], evaluation.entropy[d]] for d in domains},
            "measured": measured_compute(runs, domains, recipe.rollout.group_size),
            "runs": [r.name for r in runs],
        }
    return records


def _order_check(recipe: Recipe, states: dict[str, SchedulerState], records: dict) -> list[dict]:
    """Predicted (from the bwt arm's measurements) vs measured final accuracy per trained order."""
    if "bwt" not in states:
        return []
    seen: dict[tuple[str, ...], str] = {}
    for name, rec in records.items():
        if rec.get("order") and name not in ("base",) and "reused_from" not in rec:
            seen.setdefault(tuple(rec["order"]), name)
    orders = list(seen)
    preds = predicted_orders(states["bwt"], orders, recipe.schedule.steps_per_phase)
    return [
        {"order": list(o), "arm": seen[o], "predicted": p, "measured": records[seen[o]]["accuracy"]}
        for o, p in zip(orders, preds)
    ]


# ---- the whole reproduction -------------------------------------------------------------------
def reproduce(recipe: Recipe, out: Path, opts: ReproOptions, say: Say = log.info) -> Path:
    """Run every arm for every seed at equal compute; write results.json, report.md, plots."""
    from omnisched.repro.report import write_outputs
    from omnisched.repro.results import build_results

    if opts.quick:
        recipe = quick_recipe(recipe)
    seeds = [recipe.run.seed + i for i in range(1 if opts.quick else opts.seeds)]
    domains = [d.name for d in recipe.domains]
    kinds = {name: dom.kind for name, dom in build_domains(recipe).items()}
    arms = select_arms(plan_arms(domains, opts.all_orders, kinds), opts.arms)
    s = recipe.schedule
    compute = arm_compute(
        arms,
        s.steps_per_phase,
        s.prompts_per_step,
        recipe.rollout.group_size,
        recipe.learner.ppo_epochs,
    )
    budget = check_equal_compute(compute)
    say(
        f"{len(arms)} arms x {len(seeds)} seed(s); every trained arm: {budget.grpo_steps} GRPO "
        f"steps, {budget.optimizer_steps} optimizer steps, {budget.rl_samples} RL samples"
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(_yaml(recipe))
    per_seed = {}
    for seed in seeds:
        per_seed[seed] = run_seed(recipe, seed, arms, out / f"seed-{seed}", opts, say)
        # partial results after every seed: an interrupted reproduction still leaves a table
        results = build_results(recipe, arms, compute, per_seed, opts)
        write_outputs(out, results)
    return out / "report.md"


def select_arms(arms: list[ArmSpec], names: Sequence[str] | None) -> list[ArmSpec]:
    """`arms` restricted to `names` (plus base and joint, which every comparison needs, and
    bwt when reverse is asked for); one line naming unknown arms. Without names: every arm but
    `reverse` (a control of the bwt order that costs a whole budget per seed; ask for it)."""
    if not names:
        return [a for a in arms if a.name != "reverse"]
    known = [a.name for a in arms]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"--arms: unknown arm(s) {unknown}; known: {', '.join(known)}")
    keep = {"base", "joint", *names} | ({"bwt"} if "reverse" in names else set())
    return [a for a in arms if a.name in keep]


def _yaml(recipe: Recipe) -> str:
    import yaml

    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
