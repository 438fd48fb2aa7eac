"""Held-out evaluation of every domain: accuracy (avg@k of the hybrid reward) and entropy.

It needs rollout engines and reward workers only, no learner: `evaluate_folder` evaluates any
HF model folder exactly as a run evaluates its policy (same eval sets, sampling and seed).
Reward failures count as in training (`reward/<domain>/<component>/errors`, ..., in the eval
record) and stop the run past `reward.max_error_rate`, after the groups are in rollouts.jsonl.
"""

from __future__ import annotations

import time
from pathlib import Path

from omnisched.config.schema import Recipe
from omnisched.domains import Domain, build_domains
from omnisched.metrics import MetricsLogger
from omnisched.metrics.rollouts import write_groups
from omnisched.orchestration.groups import Group
from omnisched.orchestration.reward_pool import RewardPool, reward_pool
from omnisched.orchestration.rollout_pool import RolloutPool
from omnisched.orchestration.sampler import check_failures
from omnisched.rollout.base import SamplingParams
from omnisched.schedule.state import Evaluation


class Evaluator:
    def __init__(
        self,
        recipe: Recipe,
        domains: dict[str, Domain],
        rollout: RolloutPool,
        rewards: RewardPool,
        metrics: MetricsLogger,
    ) -> None:
        self.recipe = recipe
        self.domains = domains
        self.rollout = rollout
        self.rewards = rewards
        self.metrics = metrics

    def params(self) -> SamplingParams:
        r = self.recipe
        return SamplingParams(
            n=1 if r.eval.temperature == 0 else r.eval.samples,
            max_new_tokens=r.eval.max_new_tokens or r.rollout.max_new_tokens,
            temperature=r.eval.temperature,
            top_p=r.rollout.top_p,
            seed=r.run.seed,
        )

    def evaluate(self, label: str, step: int) -> Evaluation:
        """Every domain's eval set; logged as a `kind: eval` record at `step`."""
        t0 = time.perf_counter()
        r = self.recipe
        params = self.params()
        acc, ent, items = {}, {}, {}
        failures: dict[str, int] = {}  # "reward/<domain>/<component>/<counter>", as in training
        for name, dom in self.domains.items():
            outs = self.rollout.generate([ex.prompt for ex in dom.eval_set], params)
            groups = [
                Group(f"eval.{name}.{i}", name, ex, comps)
                for i, (ex, comps) in enumerate(zip(dom.eval_set, outs))
            ]
            counts = self.rewards.score(name, groups)
            write_groups(
                self.metrics.path.parent,
                groups,
                r.learner.adv_eps,
                r.learner.scale_advantages,
                kind="eval",
                step=step,
                label=label,
            )
            check_failures(name, counts, r.reward.max_error_rate, groups, f"evaluation {label}")
            logged = {k: v for k, v in counts.items() if v and not k.endswith("/items")}
            failures.update({f"reward/{name}/{k}": v for k, v in logged.items()})
            per_item = [sum(g.rewards) / len(g.rewards) for g in groups]
            entropies = [c.mean_entropy for g in groups for c in g.completions]
            acc[name] = sum(per_item) / len(per_item)
            ent[name] = sum(entropies) / len(entropies)
            items[name] = [round(x, 4) for x in per_item]
        dt = time.perf_counter() - t0
        flat = {f"acc/{d}": v for d, v in acc.items()} | {f"entropy/{d}": v for d, v in ent.items()}
        self.metrics.log(step, {"label": label, **flat, **failures, "eval_s": dt}, kind="eval")
        return Evaluation(accuracy=acc, entropy=ent, items=items)


def evaluate_folder(recipe: Recipe, model_dir: Path, out_dir: Path, label: str) -> Evaluation:
    """Evaluate an HF model folder on every domain of `recipe` as a run evaluates its policy:
    same seed, so the same eval sets and sampling seed. Writes `out_dir/metrics.jsonl`."""
    from omnisched.orchestration.backend import make_backend

    domains = build_domains(recipe)
    backend = make_backend(recipe.ray)
    metrics = MetricsLogger(Path(out_dir))
    try:  # no learner, no placement group: the engines and reward workers go where Ray puts them
        rollout = RolloutPool(backend, recipe, str(model_dir), [None] * recipe.rollout.num_workers)
        rewards = reward_pool(backend, recipe, domains, [None] * recipe.ray.reward_workers)
        return Evaluator(recipe, domains, rollout, rewards, metrics).evaluate(label, 0)
    finally:
        metrics.close()
        backend.shutdown()
