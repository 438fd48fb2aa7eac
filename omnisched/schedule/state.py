"""The scheduler's whole state: evaluations per phase, decisions and reasons (JSON on disk)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omnisched.schedule.transfer import (
    backward_transfer,
    entropy_trend,
    forward_transfer,
    transfer_matrix,
)


@dataclass
class Evaluation:
    """Held-out results of every domain at one point in training."""

    accuracy: dict[str, float]
    entropy: dict[str, float]
    items: dict[str, list[float]] = field(default_factory=dict)  # per-item score, eval-set order


@dataclass
class PhaseRecord:
    index: int
    trained: list[str]  # one domain for curricula; all domains for joint phases
    reason: str
    predicted_final: dict[str, float] | None = None
    steps: int = 0
    result: Evaluation | None = None  # filled at the phase boundary
    probe: bool = False  # a short phase run only to measure transfer
    planned_order: list[str] | None = None  # the whole order the decision was taken from
    mixture: dict[str, float] | None = None  # latest per-step sampling weights (online policies)
    exposure: dict[str, float] = field(default_factory=dict)  # step-equivalents per domain
    predicted_sd: dict[str, float] | None = None  # uncertainty of predicted_final
    planned_steps: list[int] | None = None  # steps of each phase of planned_order


@dataclass
class SchedulerState:
    domains: list[str]
    kinds: dict[str, str]
    policy: str
    total_phases: int
    baseline: Evaluation | None = None
    phases: list[PhaseRecord] = field(default_factory=list)
    choices: dict[str, int] = field(default_factory=dict)  # options of multiple-choice domains
    policy_state: dict[str, Any] = field(default_factory=dict)  # what the policy remembers

    # ---- derived measurements -------------------------------------------------------------
    def completed(self) -> list[PhaseRecord]:
        return [p for p in self.phases if p.result is not None]

    def current(self) -> Evaluation | None:
        done = self.completed()
        return done[-1].result if done else self.baseline

    def R(self) -> list[list[float]]:
        """R[i][j] for completed phase i, columns in recipe domain order."""
        return [[p.result.accuracy[d] for d in self.domains] for p in self.completed()]  # type: ignore[union-attr]

    def regular(self) -> list[PhaseRecord]:
        """Completed phases that are not probes (a probe only measures; BWT/FWT skip it)."""
        return [p for p in self.completed() if not p.probe]

    def training_order(self) -> list[str] | None:
        """Domains in the order trained, when every regular phase trained one new domain; else
        None. Probe phases are not part of the order."""
        regular = self.regular()
        order = [p.trained[0] for p in regular if len(p.trained) == 1]
        if len(order) != len(regular) or len(set(order)) != len(order):
            return None
        return order

    def R_trained_order(self) -> list[list[float]] | None:
        """R over the regular phases, columns reordered so column j is the domain trained in
        regular phase j (for BWT/FWT)."""
        order = self.training_order()
        if not order:
            return None
        cols = order + [d for d in self.domains if d not in order]
        return [[p.result.accuracy[d] for d in cols] for p in self.regular()]  # type: ignore[union-attr]

    def bwt(self) -> float | None:
        R = self.R_trained_order()
        return backward_transfer(R) if R and len(R) >= 2 else None

    def fwt(self) -> float | None:
        """FWT against the accuracies before the first regular phase: the baseline, or after
        the last probe (each probe trained its own domain a little)."""
        R, order = self.R_trained_order(), self.training_order()
        if not R or len(R) < 2 or self.baseline is None or order is None:
            return None
        probes = [p for p in self.completed() if p.probe]
        before = probes[-1].result if probes else self.baseline
        cols = order + [d for d in self.domains if d not in order]
        return forward_transfer(R, [before.accuracy[d] for d in cols])  # type: ignore[union-attr]

    def transfer_matrix(self, full_steps: int | None = None) -> dict[str, dict[str, float]]:
        """D[a][b] from the completed phases (see transfer.transfer_matrix); {} without baseline."""
        if self.baseline is None:
            return {}
        runs = [(p.trained, p.steps, p.result.accuracy) for p in self.completed()]  # type: ignore[union-attr]
        return transfer_matrix(self.baseline.accuracy, runs, full_steps)

    def entropy_history(self) -> dict[str, list[float]]:
        """Entropy per domain over evaluations: the baseline (if any), then each phase."""
        evals = ([self.baseline] if self.baseline else []) + [p.result for p in self.completed()]
        return {d: [e.entropy[d] for e in evals if d in e.entropy] for d in self.domains}  # type: ignore[union-attr]

    def entropy_trends(self) -> dict[str, dict[str, float | None]]:
        return {d: entropy_trend(s) for d, s in self.entropy_history().items() if s}

    # ---- persistence -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = asdict(self)
        out["R"] = self.R()
        out["BWT"] = self.bwt()
        out["FWT"] = self.fwt()
        out["D"] = self.transfer_matrix()
        out["entropy_trend"] = self.entropy_trends()
        return out

    @classmethod
    def from_dict(cls, data: dict) -> SchedulerState:
        def ev(d: dict | None) -> Evaluation | None:
            return Evaluation(**d) if d else None

        phases = [
            PhaseRecord(**{**p, "result": ev(p.get("result"))}) for p in data.get("phases", [])
        ]
        policy_state = dict(data.get("policy_state") or {})
        if data.get("bandit"):  # written before policy_state existed
            policy_state["bandit"] = data["bandit"]
        return cls(
            domains=list(data["domains"]),
            kinds=dict(data["kinds"]),
            policy=data["policy"],
            total_phases=int(data["total_phases"]),
            baseline=ev(data.get("baseline")),
            phases=phases,
            choices={d: int(k) for d, k in data.get("choices", {}).items()},
            policy_state=policy_state,
        )

    def save(self, path: Path) -> None:
        """Atomic write: a crash leaves either the old or the new file, never half of one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".state-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> SchedulerState:
        return cls.from_dict(json.loads(Path(path).read_text()))
