"""The sample generator, kept apart from the trainer (as OpenRLHF does): draw prompts, generate
G completions each, score them, and hand back whole groups.

With `rollout.dynamic_sampling` (DAPO), groups whose rewards all tie are filtered out and more
prompts are drawn, from the same domain mixture, until the batch holds `prompts_per_step` groups
with signal or `max_rounds` extra generation rounds have run (a batch still short then trains
on what it has). What was drawn is counted per domain (`prompts/<domain>`), filtered or not,
and `dynamic/*` (filtered fraction, extra rounds and prompts) is logged on every step.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from omnisched.config.schema import Recipe
from omnisched.domains import Domain
from omnisched.errors import OmniError
from omnisched.orchestration.groups import Group
from omnisched.orchestration.reward_pool import RewardPool
from omnisched.orchestration.rollout_pool import RolloutPool
from omnisched.rollout.base import SamplingParams


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


def scaled_advantages(rewards: list[float], eps: float = 1e-4) -> list[float]:
    """(r - mean) / (unbiased std + eps), as `grpo.group_advantages` (torch-free here)."""
    n = len(rewards)
    mean = sum(rewards) / n
    std = (sum((r - mean) ** 2 for r in rewards) / max(n - 1, 1)) ** 0.5
    return [0.0 if std == 0 else (r - mean) / (std + eps) for r in rewards]


class RewardFailure(OmniError):
    """`check_failures`' stop, carrying the groups of the failing domain so that the caller can
    write them to rollouts.jsonl (where the per-item reasons are) before the run ends."""

    def __init__(self, message: str, groups: Sequence[Group] = ()) -> None:
        super().__init__(message)
        self.groups = list(groups)


def check_failures(
    domain: str,
    counts: dict[str, int],
    max_rate: float,
    groups: Sequence[Group] = (),
    scope: str = "one step",
) -> None:
    """Stop the run (one line) when a component's verifier failed on more than `max_rate` of
    the items it scored (in `scope`): a broken verifier must not pass for a low reward.
    `groups` (the domain's scored groups) travel with the error to be logged."""
    for key, items in counts.items():
        if not key.endswith("/items") or not items:
            continue
        comp = key.removesuffix("/items")
        failed = counts.get(f"{comp}/errors", 0) + counts.get(f"{comp}/timeouts", 0)
        if failed > max_rate * items:
            raise RewardFailure(
                f"domain '{domain}', reward component '{comp}': the verifier failed (raised or "
                f"timed out) on {failed} of {items} items in {scope}, more than "
                f"reward.max_error_rate={max_rate:g}; the reasons are in the run's rollouts.jsonl",
                groups,
            )


@dataclass
class RolloutBatch:
    """One step's groups (what trains) and what it took to get them."""

    groups: list[Group]
    drawn: list[Group]  # every group generated this step, filtered ones included
    rounds: int = 1  # generation rounds (1 + extra rounds of dynamic sampling)
    counters: dict[str, int] = field(default_factory=dict)  # "<domain>/<component>/<counter>"
    dynamic: bool = False  # rollout.dynamic_sampling was on: its metrics are logged every step
    generate_s: float = 0.0
    score_s: float = 0.0

    def metrics(self, domains: list[str]) -> dict[str, float]:
        """Rewards per domain and component over everything drawn (what the policy did), judge
        counters, prompts drawn per domain, and dynamic sampling's filtering and extra work."""
        out: dict[str, float] = {}
        by_domain: dict[str, list[Group]] = {}
        for g in self.drawn:
            by_domain.setdefault(g.domain, []).append(g)
        for dom, groups in by_domain.items():
            values = [r for g in groups for r in g.rewards]
            out[f"reward/{dom}"] = sum(values) / len(values)
            adv = [abs(a) for g in groups for a in scaled_advantages(g.rewards)]
            out[f"adv_abs/{dom}"] = sum(adv) / len(adv)  # learnability (DUMP's signal)
            for comp in groups[0].components:  # NaN: the verifier returned None (not applicable)
                vals = [v for g in groups for v in g.components[comp] if not math.isnan(v)]
                if vals:
                    out[f"reward/{dom}/{comp}"] = sum(vals) / len(vals)
        out.update(
            {f"reward/{k}": v for k, v in self.counters.items() if v and not k.endswith("/items")}
        )
        rewards = [r for g in self.drawn for r in g.rewards]
        out["reward/mean"] = sum(rewards) / max(len(rewards), 1)
        drawn = Counter(g.domain for g in self.drawn)
        out.update({f"prompts/{d}": drawn.get(d, 0) for d in domains})
        if self.dynamic:  # zeros on steps that filtered nothing, so step averages are right
            no_signal = sum(1 for g in self.drawn if not g.has_signal)
            out["dynamic/filtered_frac"] = no_signal / len(self.drawn)
            out["dynamic/extra_rounds"] = self.rounds - 1
            out["dynamic/extra_prompts"] = len(self.drawn) - len(self.groups)
        return out


class GroupSampler:
    """Draws prompts from the domains (prompt RNG `rng`, checkpointed by the controller),
    generates on the rollout pool, scores on the reward pool."""

    def __init__(
        self,
        recipe: Recipe,
        domains: dict[str, Domain],
        rng: random.Random,
        rollout: RolloutPool,
        rewards: RewardPool,
    ) -> None:
        self.recipe = recipe
        self.domains = domains
        self.rng = rng
        self.rollout = rollout
        self.rewards = rewards
        self.weights = {d.name: d.weight for d in recipe.domains}

    def draw(
        self, names: list[str], mixture: dict[str, float] | None, n: int, tag: str
    ) -> list[tuple[str, str]]:
        """n (group id, domain) pairs: by the `mixture` weights (largest remainder), else by the
        domains' recipe `weight`s when they differ, else an even split; in shuffled order."""
        weights = {d: self.weights[d] for d in names}
        if not mixture and len(set(weights.values())) > 1:
            mixture = weights
        if mixture:
            picks = [d for d, k in mixture_counts(mixture, n).items() for _ in range(k)]
        else:
            picks = [names[i % len(names)] for i in range(n)]
        self.rng.shuffle(picks)
        return [(f"{tag}.{i}", d) for i, d in enumerate(picks)]

    def sample(self, names: list[str], mixture: dict[str, float] | None, step: int) -> RolloutBatch:
        """The groups one GRPO step trains on (see the module docstring)."""
        r = self.recipe
        n = r.schedule.prompts_per_step
        params = SamplingParams(
            n=r.rollout.group_size,
            max_new_tokens=r.rollout.max_new_tokens,
            temperature=r.rollout.temperature,
            top_p=r.rollout.top_p,
            seed=r.run.seed * 1_000_003 + step,
        )
        dynamic = r.rollout.dynamic_sampling
        batch = RolloutBatch(groups=[], drawn=[], dynamic=dynamic.enabled)
        batch.drawn = self._round(self.draw(names, mixture, n, f"{step}"), params, batch)
        if not dynamic.enabled:
            batch.groups = list(batch.drawn)
            return batch
        kept = [g for g in batch.drawn if g.has_signal]
        while len(kept) < n and batch.rounds <= dynamic.max_rounds:
            rate = max(len(kept), 1) / len(batch.drawn)  # signal rate so far
            more = min(n, math.ceil((n - len(kept)) / rate))  # at most a batch per round
            tag = f"{step}r{batch.rounds}"
            extra_params = SamplingParams(**{**vars(params), "seed": params.seed + batch.rounds})
            extra = self._round(self.draw(names, mixture, more, tag), extra_params, batch)
            batch.rounds += 1
            batch.drawn += extra
            kept += [g for g in extra if g.has_signal]
        batch.groups = kept[:n] if kept else list(batch.drawn[:n])
        return batch

    def _round(
        self, picks: list[tuple[str, str]], params: SamplingParams, batch: RolloutBatch
    ) -> list[Group]:
        """Generate and score one round of drawn prompts."""
        t0 = time.perf_counter()
        examples = [(gid, d, self.domains[d].train_batch(self.rng, 1)[0]) for gid, d in picks]
        outs = self.rollout.generate([ex.prompt for _, _, ex in examples], params)
        groups = [Group(gid, d, ex, comps) for (gid, d, ex), comps in zip(examples, outs)]
        t1 = time.perf_counter()
        for dom in dict.fromkeys(g.domain for g in groups):
            scored = [g for g in groups if g.domain == dom]
            counts = self.rewards.score(dom, scored)
            for name, count in counts.items():
                key = f"{dom}/{name}"
                batch.counters[key] = batch.counters.get(key, 0) + count
            check_failures(dom, counts, self.recipe.reward.max_error_rate, scored)
        batch.generate_s += t1 - t0
        batch.score_s += time.perf_counter() - t1
        return groups
