"""Built-in `math` domain: integer arithmetic with a single numeric answer (math-verify checks)."""

from __future__ import annotations

import random

from omnisched.config.schema import DomainConfig, RewardComponent
from omnisched.domains.base import Domain, Example, check_options, option


class ArithmeticDomain(Domain):
    """`a+b=` / `a-b=` (and `a*b`) with a < `max_operand`, b < `max_second`; exact integer answer.

    The tiny recipe uses a two-digit a and a one-digit b: each answer digit then depends on a
    few input digits and a carry, a rule a small model learns partly from SFT and RL can finish.
    """

    kind = "structured"
    default_reward = (RewardComponent(verifier="math"),)

    def __init__(self, cfg: DomainConfig, seed: int) -> None:
        check_options(cfg, {"max_operand", "max_second", "ops"})
        self.max_operand = option(cfg, "max_operand", 100, int)
        self.max_second = option(cfg, "max_second", self.max_operand, int)
        self.ops = option(cfg, "ops", "+-", str)
        if not self.ops or set(self.ops) - set("+-*"):
            raise ValueError(f"domain '{cfg.name}': options.ops must use only + - *")
        super().__init__(cfg, seed)

    def sample(self, rng: random.Random) -> Example:
        a, b = rng.randrange(self.max_operand), rng.randrange(self.max_second)
        op = rng.choice(self.ops)
        answer = {"+": a + b, "-": a - b, "*": a * b}[op]
        expr = f"{a}{op}{b}"
        return Example(
            id=expr,
            prompt=f"Q: {expr}=?\nA: ",
            columns={"answer": str(answer)},
            demonstration=str(answer),
        )
