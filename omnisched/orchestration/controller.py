"""The single controller: the driver loop of the paper's algorithm.

warm start -> baseline eval -> for each phase: policy picks domain(s) -> GRPO steps
(generate G per prompt -> hybrid reward -> group advantages -> learner step -> weight sync)
-> checkpoint -> eval every domain -> scheduler records R, entropy -> report
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from omnisched.config.schema import Recipe
from omnisched.domains import Domain, Example, build_domain
from omnisched.errors import OmniError
from omnisched.learner.base import ScoredGroup
from omnisched.metrics import MetricsLogger, write_report
from omnisched.model import cache as model_cache
from omnisched.orchestration.backend import Backend, make_backend
from omnisched.orchestration.checkpoint import latest_checkpoint, truncate_metrics, write_checkpoint
from omnisched.orchestration.learner_group import LearnerGroup, check_resume_world_size
from omnisched.orchestration.placement import (
    REWARD_WORKER_CPUS,
    plan_placement,
    unsupported_by_controller,
)
from omnisched.orchestration.services import RewardWorker, SchedulerService
from omnisched.orchestration.workers import RolloutWorker, release_freed_memory
from omnisched.rollout.base import Completion, SamplingParams
from omnisched.schedule.state import Evaluation, SchedulerState

log = logging.getLogger(__name__)
Progress = Callable[[str, dict[str, Any]], None]


def mixture_counts(weights: dict[str, float], n: int) -> dict[str, int]:
    """Split n prompts by weights with the largest-remainder method (counts sum to n)."""
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"mixture weights must have a positive sum, got {weights}")
    exact = {d: n * w / total for d, w in weights.items()}
    counts = {d: int(x) for d, x in exact.items()}
    by_remainder = sorted(exact, key=lambda d: exact[d] - counts[d], reverse=True)
    for d in by_remainder[: n - sum(counts.values())]:
        counts[d] += 1
    return counts


class Controller:
    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path,
        progress: Progress | None = None,
        resume: bool = False,
    ) -> None:
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.restarts = {"rollout": 0, "reward": 0}
        self.ckpt_root = self.run_dir / "checkpoints"
        self.progress = progress or (lambda event, info: None)
        self.rng = random.Random(recipe.run.seed)
        self.domains: dict[str, Domain] = {
            d.name: build_domain(d, recipe.run.seed) for d in recipe.domains
        }
        self.step = 0
        self.timings: dict[str, float] = {"eval_s": 0.0, "train_s": 0.0, "warm_start_s": 0.0}

    # ---- setup ----------------------------------------------------------------------------
    def setup(self, backend: Backend) -> None:
        r = self.recipe
        self.backend = backend
        problems = unsupported_by_controller(r)
        if problems:
            raise OmniError("; ".join(problems))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "recipe.yaml").write_text(yaml.safe_dump(r.model_dump(mode="json")))
        t0 = time.perf_counter()
        self.model_path = self.warm_start()
        self.timings["warm_start_s"] = time.perf_counter() - t0
        self.start = self._restore() if self.resume else None
        weights = str(self.start[0]) if self.start else self.model_path
        if self.start:  # before any model loads
            check_resume_world_size(weights, r.placement.learner_workers)
        # one placement group holds every actor's resources before any actor starts (the warm
        # start above ran outside it); bundle index per actor, by kind
        plan = plan_placement(r)
        backend.reserve(plan.bundles, plan.strategy)
        self.bundles = {g.kind: [b[0] if b else None for b in g.bundles] for g in plan.groups}
        self.rollout = [self._spawn_rollout(weights, i) for i in range(r.rollout.num_workers)]
        self.rewarders = [self._spawn_rewarder(i) for i in range(r.ray.reward_workers)]
        self.learner = LearnerGroup(backend, r, weights, self.bundles["learner"])
        if self.start:
            self.learner.load_trainer_state(weights)
        # names, dtypes and shapes of the weights: fixed, so the broadcast group's receivers get
        # them once here; None = sync through the object store
        self.weight_meta = (
            self._join_weight_group() if r.rollout.weight_sync == "broadcast" else None
        )
        state_path = self.run_dir / "scheduler_state.json"
        if self.resume and state_path.is_file():
            state = SchedulerState.load(state_path)
        else:
            state = SchedulerState(
                domains=list(self.domains),
                kinds={n: d.kind for n, d in self.domains.items()},
                policy=r.schedule.policy,
                total_phases=r.schedule.phases or len(self.domains),
            )
        self.scheduler = backend.spawn(
            SchedulerService, state, r.schedule, str(state_path), num_cpus=0
        )
        self.metrics = MetricsLogger(self.run_dir)

    def _spawn_rollout(self, weights: str, index: int) -> Any:
        """Rollout engine `index`, in its placement-group bundle."""
        r = self.recipe
        return self.backend.spawn(
            RolloutWorker,
            r.rollout.backend,
            weights,
            r.model.dtype,
            r.run.threads,
            num_cpus=r.rollout.cpus_per_worker,
            num_gpus=r.rollout.gpus_per_worker,
            bundle=self.bundles["rollout"][index],
        )

    def _join_weight_group(self) -> list:
        """Learner rank 0 hosts the broadcast group on its node and every rollout engine joins at
        once, one group rank each (the controller starts engines without tensor parallelism)."""
        host, port = self.learner.weight_group_address()
        world_size = 1 + len(self.rollout)
        meta = self.learner.join_weight_group(host, port, world_size)
        joins = [
            self.backend.call(w, "join_weight_group", host, port, world_size, 1 + i)
            for i, w in enumerate(self.rollout)
        ]
        # the engines' errors first: gather raises the first failed call's error in list order
        return self.backend.gather([*joins, meta])[-1]

    def sync_weights(self) -> None:
        """Learner -> rollout engines: by broadcast while the group is whole, else the state dict
        through the object store (a future, not the tensors: under Ray the weights go learner ->
        object store -> rollout workers without being deserialised in the torch-free driver)."""
        if self.weight_meta is not None:
            sent = self.learner.broadcast_weights()
            received = [
                self.backend.call(w, "receive_weights", self.weight_meta) for w in self.rollout
            ]
            self.backend.gather([*received, sent])
            return
        state = self.learner.state_dict(self.recipe.model.dtype)  # as the engines hold it
        self._gather_pool(
            "rollout", [(i, "update_weights", (state,)) for i in range(len(self.rollout))]
        )

    def _spawn_rewarder(self, index: int) -> Any:
        """Reward worker `index`, in its placement-group bundle."""
        r = self.recipe
        specs = {name: dom.reward for name, dom in self.domains.items()}
        return self.backend.spawn(
            RewardWorker,
            specs,
            r.ray.reward_concurrency,
            r.ray.reward_timeout_s,
            num_cpus=REWARD_WORKER_CPUS,
            bundle=self.bundles["reward"][index],
        )

    # ---- checkpoints and resume -------------------------------------------------------------
    def _restore(self) -> tuple[Path, dict[str, Any]] | None:
        """Load the latest step checkpoint's controller state and cut metrics.jsonl back to it.
        Without a checkpoint the run starts over in the same directory."""
        found = latest_checkpoint(self.ckpt_root)
        state_path = self.run_dir / "scheduler_state.json"
        if found is None:
            state_path.unlink(missing_ok=True)
            truncate_metrics(self.run_dir / "metrics.jsonl", 0, [])
            log.warning("resume: no checkpoint in %s; starting the run over", self.ckpt_root)
            return None
        path, ctl = found
        self.step = ctl["step"]
        self.timings.update(ctl.get("timings", {}))
        version, internal, gauss = ctl["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        sched = SchedulerState.load(state_path) if state_path.is_file() else None
        done = len(sched.completed()) if sched else 0
        labels = (["base"] if sched and sched.baseline else []) + [
            f"phase-{k}" for k in range(done)
        ]
        kept, dropped = truncate_metrics(self.run_dir / "metrics.jsonl", self.step, labels)
        log.warning(
            "resume: %s at step %d (phase %d, step %d of it); metrics kept %d, dropped %d",
            path.name,
            self.step,
            ctl["phase"],
            ctl["step_in_phase"],
            kept,
            dropped,
        )
        self.progress("resume", {"step": self.step, "checkpoint": str(path)})
        return path, ctl

    def checkpoint(self, phase: int, step_in_phase: int) -> None:
        state = {
            "step": self.step,
            "phase": phase,
            "step_in_phase": step_in_phase,
            "rng": list(self.rng.getstate()),
            "timings": self.timings,
        }
        write_checkpoint(
            self.ckpt_root,
            self.step,
            state,
            self.learner.save_checkpoint,
        )

    # ---- fault tolerance ---------------------------------------------------------------------
    def _gather_pool(self, pool: str, calls: list[tuple[int, str, tuple]]) -> list[Any]:
        """Run `calls` (worker index, method, args) on the rollout or reward pool; when a worker
        process died, replace the dead workers (re-syncing rollout weights) and retry the calls."""
        workers = self.rollout if pool == "rollout" else self.rewarders
        for attempt in range(3):
            futures = [self.backend.call(workers[i], m, *a) for i, m, a in calls]
            try:
                return self.backend.gather(futures)
            except Exception as exc:
                if attempt == 2 or not self.backend.is_worker_failure(exc):
                    raise
                log.warning("a %s worker died (%s); restarting it and retrying", pool, exc)
                self._replace_dead(pool, workers)
        raise AssertionError("unreachable")

    def _replace_dead(self, pool: str, workers: list[Any]) -> None:
        state = None
        for i, w in enumerate(workers):
            if self.backend.alive(w):
                continue
            self.backend.kill(w)
            self.restarts[pool] += 1
            if pool == "rollout":
                # a restarted engine cannot join the existing broadcast group, and the group
                # cannot broadcast without the dead rank: the pool falls back to the object store
                if self.weight_meta is not None:
                    log.warning("rollout weights now sync through the object store, not broadcast")
                    self.weight_meta = None
                workers[i] = self._spawn_rollout(self.model_path, i)  # the bundle it freed
                if state is None:
                    state = self.learner.state_dict(self.recipe.model.dtype)  # a ref
                self._ask(workers[i], "update_weights", state)
            else:
                workers[i] = self._spawn_rewarder(i)

    def warm_start(self) -> str:
        """The model folder RL starts from. SFT, when the cache misses, runs as a one-off task in
        its own process (under Ray), so its heap is returned to the OS before RL starts."""
        r = self.recipe
        demo_rng = random.Random(r.run.seed + 1)
        default = r.model.warm_start.examples_per_domain
        demos = [
            pair
            for cfg in r.domains
            for pair in self.domains[cfg.name].demonstrations(
                demo_rng, default if cfg.demos is None else cfg.demos
            )
        ]
        target, ready = model_cache.resolve(r.model, demos, r.run.seed)
        if ready:
            return str(target)
        self.progress("warm_start", {"examples": len(demos)})
        log_path = self.run_dir / "warm_start_progress.jsonl"
        log_path.unlink(missing_ok=True)
        future = self.backend.submit(
            model_cache.train_in_worker, r.model, demos, r.run.seed, r.run.threads, str(log_path)
        )
        seen = 0
        while True:
            finished = self.backend.done(future, timeout=1.0)
            if log_path.exists():
                lines = log_path.read_text().splitlines()
                for line in lines[seen:]:
                    with contextlib.suppress(ValueError):  # a line still being written
                        self.progress("sft", json.loads(line))
                        seen += 1
            if finished:
                path = self.backend.gather([future])[0]
                release_freed_memory()  # inline: the SFT model and optimizer are garbage now
                return path

    def _ask(self, worker: Any, method: str, *args: Any) -> Any:
        return self.backend.gather([self.backend.call(worker, method, *args)])[0]

    # ---- generation and scoring -------------------------------------------------------------
    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        """Split prompts over the rollout workers and run them in parallel."""
        k = len(self.rollout)
        chunks = [prompts[i::k] for i in range(k)]
        results = self._gather_pool(
            "rollout", [(i, "generate", (chunk, params)) for i, chunk in enumerate(chunks) if chunk]
        )
        out: list[list[Completion]] = [[] for _ in prompts]
        for i, res in enumerate(results):
            out[i::k] = res
        return out

    def score(self, domain: str, examples: list[Example], groups: list[list[Completion]]):
        """Hybrid reward of every completion; columns repeat per completion (TRL style).

        Work is split over the reward workers at prompt-group boundaries, so a judge that fills
        a dropped verdict from its group sees the whole group. Returns (total, per-component
        values, judge counters summed over workers)."""
        k = len(self.rewarders)
        cuts = [len(examples) * j // k for j in range(k + 1)]
        calls = []
        for w, (a, b) in enumerate(itertools.pairwise(cuts)):
            if b <= a:
                continue
            prompts, texts, columns = [], [], {}
            for ex, group in zip(examples[a:b], groups[a:b]):
                for c in group:
                    prompts.append(ex.prompt)
                    texts.append(c.text)
                    for key, val in ex.columns.items():
                        columns.setdefault(key, []).append(val)
            calls.append((w, "score", (domain, prompts, texts, columns)))
        batches = self._gather_pool("reward", calls)
        total = [x for b in batches for x in b.total]
        parts: dict[str, list[float]] = {}
        counters: dict[str, int] = {}
        for b in batches:
            for name, vals in b.components.items():
                parts.setdefault(name, []).extend(vals)
            for name, count in b.counters.items():
                counters[name] = counters.get(name, 0) + count
        counters["dropped"] = sum(sum(b.dropped) for b in batches)
        return total, parts, counters

    # ---- evaluation ------------------------------------------------------------------------
    def evaluate(self, label: str) -> Evaluation:
        t0 = time.perf_counter()
        r = self.recipe
        acc, ent, items = {}, {}, {}
        max_new = r.eval.max_new_tokens or r.rollout.max_new_tokens
        n = 1 if r.eval.temperature == 0 else r.eval.samples
        params = SamplingParams(
            n=n,
            max_new_tokens=max_new,
            temperature=r.eval.temperature,
            top_p=r.rollout.top_p,
            seed=r.run.seed,
        )
        for name, dom in self.domains.items():
            groups = self.generate([ex.prompt for ex in dom.eval_set], params)
            total, _, _ = self.score(name, dom.eval_set, groups)
            per_item = [
                sum(total[i * params.n : (i + 1) * params.n]) / params.n
                for i in range(len(dom.eval_set))
            ]
            entropies = [c.mean_entropy for g in groups for c in g]
            acc[name] = sum(per_item) / len(per_item)
            ent[name] = sum(entropies) / len(entropies)
            items[name] = [round(x, 4) for x in per_item]
        dt = time.perf_counter() - t0
        self.timings["eval_s"] += dt
        flat = {f"acc/{d}": v for d, v in acc.items()} | {f"entropy/{d}": v for d, v in ent.items()}
        self.metrics.log(self.step, {"label": label, **flat, "eval_s": dt}, kind="eval")
        self.progress("eval", {"label": label, "accuracy": acc, "entropy": ent})
        return Evaluation(accuracy=acc, entropy=ent, items=items)

    # ---- training --------------------------------------------------------------------------
    def draw_prompts(
        self, domains: list[str], mixture: dict[str, float] | None = None
    ) -> list[tuple[str, Example]]:
        """`prompts_per_step` prompts: an even split over `domains`, or split by the online
        policy's `mixture` weights (largest remainder), in shuffled order."""
        n = self.recipe.schedule.prompts_per_step
        if mixture:
            names = [d for d, k in mixture_counts(mixture, n).items() for _ in range(k)]
        else:
            names = [domains[i % len(domains)] for i in range(n)]
        self.rng.shuffle(names)
        return [(d, self.domains[d].train_batch(self.rng, 1)[0]) for d in names]

    def train_step(
        self, domains: list[str], mixture: dict[str, float] | None = None
    ) -> dict[str, float]:
        r = self.recipe
        t0 = time.perf_counter()
        drawn = self.draw_prompts(domains, mixture)
        params = SamplingParams(
            n=r.rollout.group_size,
            max_new_tokens=r.rollout.max_new_tokens,
            temperature=r.rollout.temperature,
            top_p=r.rollout.top_p,
            seed=r.run.seed * 1_000_003 + self.step,
        )
        groups = self.generate([ex.prompt for _, ex in drawn], params)
        t_gen = time.perf_counter()
        rewards: list[list[float]] = [[] for _ in drawn]
        stats: dict[str, float] = {}
        for dom in dict.fromkeys(d for d, _ in drawn):
            idx = [i for i, (d, _) in enumerate(drawn) if d == dom]
            total, parts, counters = self.score(
                dom, [drawn[i][1] for i in idx], [groups[i] for i in idx]
            )
            g = r.rollout.group_size
            for k, i in enumerate(idx):
                rewards[i] = total[k * g : (k + 1) * g]
            stats[f"reward/{dom}"] = sum(total) / len(total)
            for comp, vals in parts.items():
                stats[f"reward/{dom}/{comp}"] = sum(vals) / len(vals)
            for name, count in counters.items():  # judge retries, fallbacks, gated samples
                if count:
                    stats[f"judge/{dom}/{name}"] = count
        t_score = time.perf_counter()
        scored = [
            ScoredGroup(group[0].prompt_ids, [c.token_ids for c in group], rew)
            for group, rew in zip(groups, rewards)
        ]
        learn = self.learner.train_groups(scored)
        trained = int(learn.pop("samples_trained", 0))
        if trained:  # a batch whose groups all tie carried no gradient: weights are unchanged
            self.sync_weights()
        t_end = time.perf_counter()
        self.step += 1
        lengths = [len(c.token_ids) for g in groups for c in g]
        record = {
            **stats,
            **{f"learner/{k}": v for k, v in learn.items()},
            "reward/mean": sum(map(sum, rewards)) / sum(map(len, rewards)),
            "samples_trained": trained,
            **{f"restarts/{k}": v for k, v in self.restarts.items()},
            "completion_len": sum(lengths) / len(lengths),
            "entropy": sum(c.mean_entropy for g in groups for c in g) / len(lengths),
            "time/generate_s": t_gen - t0,
            "time/score_s": t_score - t_gen,
            "time/learn_sync_s": t_end - t_score,
            "time/step_s": t_end - t0,
            "domains": "+".join(domains),
            **{f"prompts/{d}": sum(1 for x, _ in drawn if x == d) for d in self.domains},
        }
        self.timings["train_s"] += t_end - t0
        self.metrics.log(self.step, record)
        return record

    # ---- the run ---------------------------------------------------------------------------
    def run(self, backend: Backend | None = None) -> Path:
        """Train the recipe; returns the run directory. Without `backend`, one is built from
        `recipe.ray` and shut down at the end (actors and placement group with it); a given
        backend stays up, with this run's actors, until its owner shuts it down."""
        r = self.recipe
        t_start = time.perf_counter()
        owned = backend is None
        backend = make_backend(r.ray) if backend is None else backend
        try:
            self.setup(backend)
            sched = SchedulerState.from_dict(self._ask(self.scheduler, "get_state"))
            if sched.baseline is None:
                self._ask(self.scheduler, "record_baseline", self.evaluate("base"))
            total_phases = self._ask(self.scheduler, "planned_phases")  # + probe phases
            every = r.run.checkpoint_every
            first = len(sched.completed())
            resume_at = 0
            if self.start and self.start[1]["phase"] == first:
                resume_at = self.start[1]["step_in_phase"]
            for phase in range(first, total_phases):
                decision = self._ask(self.scheduler, "next_phase")
                steps = decision.steps or r.schedule.steps_per_phase
                mixture = decision.mixture
                self.progress(
                    "phase",
                    {
                        "index": phase,
                        "total": total_phases,
                        "domains": decision.domains,
                        "reason": decision.reason,
                    },
                )
                for s in range(resume_at if phase == first else 0, steps):
                    rec = self.train_step(decision.domains, mixture)
                    self.progress("step", {"phase": phase, "step": s, "total": steps, **rec})
                    # online policies (bandit) re-weight the domains after every step
                    mixture = self._ask(self.scheduler, "observe_step", self.step, rec) or mixture
                    if every and (s + 1) % every == 0 and s + 1 < steps:
                        self.checkpoint(phase, s + 1)
                self.learner.save(str(self.ckpt_root / f"phase-{phase}"))
                result = self.evaluate(f"phase-{phase}")
                self._ask(self.scheduler, "finish_phase", steps, result)
                self.checkpoint(phase + 1, 0)
            self.learner.save(str(self.ckpt_root / "final"))
            state = SchedulerState.from_dict(self._ask(self.scheduler, "get_state"))
            wall = time.perf_counter() - t_start
            self.metrics.log(self.step, {**self.timings, "wall_s": wall}, kind="timing")
            self.metrics.close()
            return write_report(self.run_dir, state, title=f"omnisched run `{r.run.name}`")
        finally:
            if owned:
                backend.shutdown()
