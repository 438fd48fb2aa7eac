"""Built-in `math` domain: integer arithmetic with a single numeric answer (math-verify checks)."""

from __future__ import annotations

import random

from omnisched.config.schema import DomainConfig, RewardComponent
from omnisched.domains.base import Domain, Example, check_options, option


class ArithmeticDomain(Domain):
    """`a+b=` / `a-b=` with operands below `max_operand`; the answer is the exact integer."""

    kind = "structured"
    default_reward = (RewardComponent(verifier="math"),)

    def __init__(self, cfg: DomainConfig, seed: int) -> None:
        check_options(cfg, {"max_operand", "ops"})
        self.max_operand = option(cfg, "max_operand", 100, int)
        self.ops = option(cfg, "ops", "+-", str)
        if not self.ops or set(self.ops) - set("+-*"):
            raise ValueError(f"domain '{cfg.name}': options.ops must use only + - *")
        super().__init__(cfg, seed)

    def sample(self, rng: random.Random) -> Example:
        a, b = rng.randrange(self.max_operand), rng.randrange(self.max_operand)
        op = rng.choice(self.ops)
        answer = {"+": a + b, "-": a - b, "*": a * b}[op]
        expr = f"{a}{op}{b}"
        return Example(
            id=expr,
            prompt=f"Q: {expr}=?\nA: ",
            columns={"answer": str(answer)},
            demonstration=str(answer),
        )
