"""Hybrid reward: a domain's verifiers and judges, weighted and normalised to [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omnisched.config.schema import RewardComponent


@dataclass
class ScoredBatch:
    total: list[float]
    components: dict[str, list[float]] = field(default_factory=dict)
    reasons: list[str | None] = field(default_factory=list)


class RewardScorer:
    """Scores completions with `components`; total = sum(w_i * r_i) / sum(w_i)."""

    def __init__(
        self, components: Sequence[RewardComponent], max_workers: int = 2, timeout: float = 10.0
    ) -> None:
        import judges
        import rewards

        self.components = list(components)
        self.max_workers = max_workers
        self.timeout = timeout
        self._fns: list[tuple[str, Any, RewardComponent]] = []
        for comp in self.components:
            if comp.verifier is not None:
                self._fns.append((comp.verifier, rewards.get(comp.verifier), comp))
            else:
                judge = judges.get(comp.judge)(**comp.options)  # type: ignore[arg-type]
                self._fns.append((comp.judge, judge, comp))  # type: ignore[arg-type]

    def score(
        self, prompts: Sequence[str], completions: Sequence[str], columns: dict[str, list[Any]]
    ) -> ScoredBatch:
        import rewards

        n = len(completions)
        total = [0.0] * n
        reasons: list[str | None] = [None] * n
        parts: dict[str, list[float]] = {}
        weight_sum = sum(c.weight for c in self.components) or 1.0
        for name, fn, comp in self._fns:
            if comp.verifier is not None:
                cols = {
                    **columns,
                    **{k: [v] * n for k, v in comp.options.items()},
                    "prompts": list(prompts),
                }
                scores = rewards.score_batch(
                    fn, list(completions), cols, max_workers=self.max_workers, timeout=self.timeout
                )
                values = [float(s) for s in scores]
                why = [getattr(s, "reason", None) for s in scores]
            else:
                verdicts = fn.judge(list(prompts), list(completions), **columns)
                values = [min(1.0, max(0.0, v.score)) for v in verdicts]
                why = [v.rationale if v.score < 1 else None for v in verdicts]
            parts[name] = values
            for i in range(n):
                total[i] += comp.weight * values[i] / weight_sum
                if why[i] and reasons[i] is None and values[i] < 1:
                    reasons[i] = f"{name}: {why[i]}"
        return ScoredBatch(total=total, components=parts, reasons=reasons)
