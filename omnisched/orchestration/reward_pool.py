"""The reward workers: a domain's hybrid reward for whole groups, spread over the workers.

Work is cut at group boundaries, so a judge that fills a dropped verdict from its group, or
measures diversity within it, sees the whole group. Columns repeat per completion (TRL style).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from omnisched.config.schema import Recipe, RewardComponent
from omnisched.domains import Domain
from omnisched.orchestration.backend import Backend
from omnisched.orchestration.groups import Group
from omnisched.orchestration.placement import REWARD_WORKER_CPUS
from omnisched.orchestration.pool import WorkerPool
from omnisched.orchestration.services import RewardWorker


class RewardPool(WorkerPool):
    kind = "reward"

    def __init__(
        self,
        backend: Backend,
        specs: Mapping[str, Sequence[RewardComponent]],
        concurrency: int,
        timeout_s: float,
        bundles: Sequence[int | None],
    ) -> None:
        self.args = (dict(specs), concurrency, timeout_s)
        super().__init__(backend, bundles)

    def spawn(self, index: int) -> Any:
        return self.backend.spawn(
            RewardWorker, *self.args, num_cpus=REWARD_WORKER_CPUS, bundle=self.bundles[index]
        )

    def score(self, domain: str, groups: Sequence[Group]) -> dict[str, int]:
        """Fill every group's `rewards`, `components` and `reasons`; returns the judge counters
        (retries, fallbacks, gated, ...) and `dropped` summed over the workers."""
        k = len(self.workers)
        cuts = [len(groups) * j // k for j in range(k + 1)]
        calls, parts = [], []
        for w, (a, b) in enumerate(itertools.pairwise(cuts)):
            if b > a:
                calls.append((w, RewardWorker.score, (domain, *_flatten(groups[a:b]))))
                parts.append(groups[a:b])
        counters: dict[str, int] = {"dropped": 0}
        for part, batch in zip(parts, self.run(calls)):
            flat = iter(range(len(batch.total)))
            for g in part:
                idx = [next(flat) for _ in g.completions]
                g.rewards = [batch.total[i] for i in idx]
                g.components = {c: [v[i] for i in idx] for c, v in batch.components.items()}
                g.reasons = [batch.reasons[i] if batch.reasons else None for i in idx]
            for name, count in batch.counters.items():
                counters[name] = counters.get(name, 0) + count
            counters["dropped"] += sum(batch.dropped)
        return counters


def _flatten(groups: Sequence[Group]) -> tuple[list[str], list[str], dict[str, list], list[str]]:
    """(prompts, completion texts, columns, group ids), one entry per completion."""
    prompts: list[str] = []
    texts: list[str] = []
    columns: dict[str, list] = {}
    ids: list[str] = []
    for g in groups:
        for c in g.completions:
            prompts.append(g.example.prompt)
            texts.append(c.text)
            ids.append(g.group_id)
            for key, val in g.example.columns.items():
                columns.setdefault(key, []).append(val)
    return prompts, texts, columns, ids


def reward_pool(
    backend: Backend, recipe: Recipe, domains: Mapping[str, Domain], bundles: Sequence[int | None]
) -> RewardPool:
    """The recipe's reward workers, each scoring every domain with that domain's reward."""
    specs = {name: dom.reward for name, dom in domains.items()}
    r = recipe.ray
    return RewardPool(backend, specs, r.reward_concurrency, r.reward_timeout_s, bundles)
