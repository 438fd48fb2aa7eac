"""Hybrid reward: a domain's verifiers and judges, weighted, gated and normalised to [0, 1].

total = sum_i(w_i * r_i) / sum_i(w_i), each r_i in [0, 1], over the components that apply to
the sample: a verifier that returns None ("does not apply", as TRL) is left out of that
sample's mean (counted as `<component>/not_applicable`); none applying gives 0. A component
with `gate: other` is evaluated only where `other` scored >= `gate_threshold` (so a judge is
not paid for a sample that failed its format check); elsewhere it takes `gate_fail`, or, when
`gate_fail` is None, the sample's total is 0. A judge verdict marked `dropped` (`fallback:
drop`) carries no signal: it is replaced by the mean of the judge's other verdicts in the same
GRPO group (`group_ids`), so it moves no advantage, and the sample is flagged in
`ScoredBatch.dropped`. A verifier that raises or times out on an item scores it 0 and is
counted (`<component>/errors`, `/timeouts`, of `/items`), with one log line per component.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omnisched.config.schema import RewardComponent
from omnisched.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class ScoredBatch:
    total: list[float]
    components: dict[str, list[float]] = field(default_factory=dict)
    reasons: list[str | None] = field(default_factory=list)
    # "{component}/{counter}": judge failure counts (retries, fallbacks, ...) and gated samples
    counters: dict[str, int] = field(default_factory=dict)
    dropped: list[bool] = field(default_factory=list)  # a judge had no verdict for the sample


@dataclass
class _Part:
    """One component's result over the whole batch."""

    values: list[float]
    why: list[str | None]
    evaluated: list[bool]  # False where the gate closed


def evaluation_order(components: Sequence[RewardComponent]) -> list[RewardComponent]:
    """Components with each gate before what it gates, otherwise in recipe order.

    Raises ConfigError for duplicate names, unknown gates and gate cycles.
    """
    keys = [c.key for c in components]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ConfigError(f"reward components share the name(s) {dupes}; set `name` to tell apart")
    for comp in components:
        if comp.gate is not None and comp.gate not in keys:
            raise ConfigError(
                f"reward component '{comp.key}': gate '{comp.gate}' is not a component; "
                f"known: {', '.join(keys)}"
            )
    order: list[RewardComponent] = []
    pending = list(components)
    while pending:
        ready = [c for c in pending if c.gate is None or c.gate in {o.key for o in order}]
        if not ready:
            raise ConfigError(f"reward gates form a cycle among {[c.key for c in pending]}")
        order.append(ready[0])
        pending.remove(ready[0])
    return order


class RewardScorer:
    """Scores completions with `components`; see the module docstring for the maths."""

    def __init__(
        self,
        components: Sequence[RewardComponent],
        max_workers: int = 2,
        timeout: float = 10.0,
        domain: str | None = None,
    ) -> None:
        import judges
        import rewards

        self.domain = domain  # named in the failure warning
        self.components = list(components)
        self.order = evaluation_order(self.components)
        self.max_workers = max_workers
        self.timeout = timeout
        self._warned: set[str] = set()
        self._fns: dict[str, Any] = {}
        for comp in self.components:
            if comp.verifier is not None:
                self._fns[comp.key] = rewards.get(comp.verifier)
            else:
                self._fns[comp.key] = judges.get(comp.judge)(**comp.options)  # type: ignore[arg-type]

    def score(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        columns: dict[str, list[Any]],
        group_ids: Sequence[str] | None = None,
    ) -> ScoredBatch:
        """Score every completion; `group_ids` (one per completion, default: its prompt) say
        which completions form a GRPO group: judges get them as the `group_id` column, and a
        dropped verdict takes its group's mean."""
        n = len(completions)
        groups = list(group_ids) if group_ids is not None else list(prompts)
        parts: dict[str, _Part] = {}
        counters: dict[str, int] = {}
        dropped = [False] * n
        zeroed = [False] * n  # a hard gate (gate_fail None) closed: total 0
        for comp in self.order:
            open_ = self._gate(comp, parts, n)
            idx = [i for i in range(n) if open_[i]]
            values, why, lost, counts = self._evaluate(
                comp, idx, prompts, completions, columns, groups
            )
            counters.update({f"{comp.key}/{k}": v for k, v in counts.items()})
            if comp.gate is not None:
                counters[f"{comp.key}/gated"] = n - len(idx)
            part = _Part([comp.gate_fail or 0.0] * n, [None] * n, open_)
            for j, i in enumerate(idx):
                part.values[i], part.why[i], dropped[i] = values[j], why[j], dropped[i] or lost[j]
            for i in range(n):
                if not open_[i]:
                    zeroed[i] = zeroed[i] or comp.gate_fail is None
                    part.why[i] = f"gated by {comp.gate}"
            parts[comp.key] = part
        total = self._total(parts, zeroed, n)
        return ScoredBatch(
            total=total,
            components={c.key: parts[c.key].values for c in self.components},
            reasons=self._reasons(parts, n),
            counters=counters,
            dropped=dropped,
        )

    def _gate(self, comp: RewardComponent, parts: dict[str, _Part], n: int) -> list[bool]:
        """Which samples this component scores: all, or those whose gate passed its threshold."""
        if comp.gate is None:
            return [True] * n
        gate = parts[comp.gate]
        return [gate.values[i] >= comp.gate_threshold for i in range(n)]

    def _evaluate(
        self,
        comp: RewardComponent,
        idx: list[int],
        prompts: Sequence[str],
        completions: Sequence[str],
        columns: dict[str, list[Any]],
        groups: Sequence[str],
    ) -> tuple[list[float], list[str | None], list[bool], dict[str, int]]:
        """(values, reasons, dropped, counters) of one component on the samples `idx`."""
        fn = self._fns[comp.key]
        sub_prompts = [prompts[i] for i in idx]
        sub_completions = [completions[i] for i in idx]
        sub_columns = {k: [v[i] for i in idx] for k, v in columns.items()}
        if comp.verifier is not None:
            return self._verify(comp, fn, sub_prompts, sub_completions, sub_columns)
        if not idx:
            counts = fn.take_counters() if hasattr(fn, "take_counters") else {}
            return [], [], [], counts
        sub_groups = [groups[i] for i in idx]
        verdicts = fn.judge(sub_prompts, sub_completions, **sub_columns, group_id=sub_groups)
        values = [min(1.0, max(0.0, float(v.score))) for v in verdicts]
        lost = [bool(getattr(v, "dropped", False)) for v in verdicts]
        values = impute_group_mean(values, lost, sub_groups)
        why = [v.rationale if v.score < 1 else None for v in verdicts]
        counts = fn.take_counters() if hasattr(fn, "take_counters") else {}
        return values, why, lost, counts

    def _verify(
        self,
        comp: RewardComponent,
        fn: Any,
        prompts: list[str],
        completions: list[str],
        columns: dict[str, list[Any]],
    ) -> tuple[list[float], list[str | None], list[bool], dict[str, int]]:
        import rewards

        n = len(completions)
        if not n:
            return [], [], [], {}
        cols = {**columns, **{k: [v] * n for k, v in comp.options.items()}, "prompts": prompts}
        scores = rewards.score_batch(
            fn, completions, cols, max_workers=self.max_workers, timeout=self.timeout
        )
        why = [getattr(s, "reason", None) for s in scores]
        failures = [getattr(s, "failure", None) for s in scores]
        counts = {
            "not_applicable": sum(math.isnan(float(s)) for s in scores),
            "errors": failures.count("error"),
            "timeouts": failures.count("timeout"),
            "items": n,
        }
        self._warn_once(comp, scores)
        return [float(s) for s in scores], why, [False] * n, counts

    def _warn_once(self, comp: RewardComponent, scores: Sequence[Any]) -> None:
        """One log line per component the first time its verifier fails on an item."""
        failed = [s for s in scores if getattr(s, "failure", None)]
        if failed and comp.key not in self._warned:
            self._warned.add(comp.key)
            where = f"domain '{self.domain}', " if self.domain else ""
            metric = f"reward/{self.domain or '<domain>'}/{comp.key}"
            log.warning(
                "%sreward component '%s': the verifier failed on %d of %d items (%s); counted as "
                "%s/errors|timeouts, scored 0",
                where, comp.key, len(failed), len(scores), failed[0].reason, metric,
            )  # fmt: skip

    def _total(self, parts: dict[str, _Part], zeroed: list[bool], n: int) -> list[float]:
        total, weights = [0.0] * n, [0.0] * n
        for comp in self.components:
            for i, value in enumerate(parts[comp.key].values):
                if not math.isnan(value):  # None from a verifier: does not apply here
                    total[i] += comp.weight * value
                    weights[i] += comp.weight
        return [0.0 if zeroed[i] or weights[i] == 0 else total[i] / weights[i] for i in range(n)]

    def _reasons(self, parts: dict[str, _Part], n: int) -> list[str | None]:
        """Per sample, the first component (in recipe order) that fell short, and why."""
        reasons: list[str | None] = [None] * n
        for comp in self.components:
            part = parts[comp.key]
            for i in range(n):
                if reasons[i] is None and part.why[i] and part.values[i] < 1:
                    reasons[i] = f"{comp.key}: {part.why[i]}"
        return reasons


def impute_group_mean(values: list[float], lost: list[bool], groups: Sequence[str]) -> list[float]:
    """Replace each lost value by the mean of the kept values of its group (same group id), so
    it adds nothing to a group-relative advantage; a group with no kept value keeps the values."""
    kept: dict[str, list[float]] = defaultdict(list)
    for value, gone, group in zip(values, lost, groups):
        if not gone:
            kept[group].append(value)
    return [
        sum(kept[g]) / len(kept[g]) if gone and kept[g] else v
        for v, gone, g in zip(values, lost, groups)
    ]
