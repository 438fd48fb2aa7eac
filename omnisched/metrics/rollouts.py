"""rollouts.jsonl: what the model was asked and what it wrote, with the reward of every part.

One line per group: `kind` (train / eval), `step`, `label` (evaluations), `domain`,
`group_id`, the prompt exactly as the engine got it, and per completion its text, reward,
component scores, the first component's reason when it fell short, and its advantage
(group-relative, as the learner computes it: std-scaled, or only centred with
`learner.scale_advantages: false`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omnisched.orchestration.groups import Group
from omnisched.orchestration.sampler import scaled_advantages

FILE = "rollouts.jsonl"


def group_record(group: Group, adv_eps: float, scale: bool = True) -> dict[str, Any]:
    adv = scaled_advantages(group.rewards, adv_eps) if scale else _centred(group.rewards)
    return {
        "domain": group.domain,
        "group_id": group.group_id,
        "prompt": group.example.prompt,
        "completions": [
            {
                "text": c.text,
                "reward": round(group.rewards[i], 4),
                "components": {
                    k: (None if math.isnan(v[i]) else round(v[i], 4))
                    for k, v in group.components.items()
                },
                "reason": group.reasons[i] if group.reasons else None,
                "advantage": round(adv[i], 4),
                "tokens": len(c.token_ids),
            }
            for i, c in enumerate(group.completions)
        ],
    }


def _centred(rewards: Sequence[float]) -> list[float]:
    """Dr.GRPO's r - mean (exactly 0 for a tied group, as the learner)."""
    if len(set(rewards)) <= 1:
        return [0.0] * len(rewards)
    m = sum(rewards) / len(rewards)
    return [r - m for r in rewards]


def write_groups(
    run_dir: Path, groups: Sequence[Group], adv_eps: float, scale: bool = True, **tags: Any
) -> None:
    """Append one line per group to `run_dir/rollouts.jsonl`, with `tags` (kind, step, ...);
    `scale` is the recipe's `learner.scale_advantages`, so the advantages are the learner's."""
    with (Path(run_dir) / FILE).open("a") as f:
        for g in groups:
            f.write(json.dumps({**tags, **group_record(g, adv_eps, scale)}) + "\n")


def read_examples(run_dir: Path, per_domain: int = 2) -> dict[str, list[dict[str, Any]]]:
    """The last `per_domain` training groups of each domain in the run's rollout log."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        return {}
    out: dict[str, list[dict[str, Any]]] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:  # a line cut by a kill
            continue
        if rec.get("kind") == "train":
            out.setdefault(rec["domain"], []).append(rec)
    return {d: recs[-per_domain:] for d, recs in out.items()}
