"""reasoning-gym tasks as a domain (generated offline), scored by the task's own scorer."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

from omnisched.config.schema import DomainConfig, RewardComponent
from omnisched.domains.base import Domain, Example, _stable_seed, check_options, option
from omnisched.errors import ConfigError

PROMPT = "{question}\nAnswer: "


class GymDomain(Domain):
    """Options: `task` (a reasoning-gym dataset name), `size` (pool of generated items),
    `config` (keyword arguments for the task generator)."""

    kind = "structured"
    default_reward = (RewardComponent(verifier="reasoning_gym"),)

    def __init__(self, cfg: DomainConfig, seed: int) -> None:
        import reasoning_gym

        check_options(cfg, {"task", "size", "config"})
        task = option(cfg, "task", "", str)
        size = option(cfg, "size", 2000, int)
        try:
            ds = reasoning_gym.create_dataset(
                task,
                size=size,
                seed=_stable_seed(task, seed) % 2**31,
                **cfg.options.get("config", {}),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigError(f"domain '{cfg.name}': reasoning-gym task '{task}': {exc}") from exc
        self.task = task
        self._items = [
            Example(
                id=f"{task}:{i}",
                prompt=PROMPT.format(question=entry["question"]),
                columns={"gym_task": task, "gym_entry": json.dumps(entry, default=str)},
                demonstration=str(entry["answer"]),
            )
            for i, entry in enumerate(ds)
        ]
        super().__init__(cfg, seed)

    def _build_eval_set(self, size: int) -> list[Example]:
        return self._items[:size]

    def sample(self, rng: random.Random) -> Example:
        return rng.choice(self._items)


def score_reasoning_gym(
    completions: Sequence[str], gym_task: Sequence[str], gym_entry: Sequence[str], **_: Any
) -> list[float]:
    """The task's own `score_answer` on each completion's first line."""
    import reasoning_gym

    out = []
    for completion, task, entry_json in zip(completions, gym_task, gym_entry):
        entry = json.loads(entry_json)
        scorer = reasoning_gym.get_score_answer_fn(task)
        answer = completion.strip().splitlines()[0] if completion.strip() else ""
        out.append(float(scorer(answer, entry)))
    return out
