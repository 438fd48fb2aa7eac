"""Built-in `math` domain: integer arithmetic with a single numeric answer (math-verify checks)."""

from __future__ import annotations

import random

from omnisched.config.schema import DomainConfig, RewardComponent
from omnisched.domains.base import Domain, Example, check_options, option
from omnisched.errors import ConfigError


class ArithmeticDomain(Domain):
    """`a+b=` / `a-b=` (and `a*b`) with a < `max_operand`, b < `max_second`; exact integer answer.

    The tiny recipe uses a two-digit a and a one-digit b: each answer digit then depends on a
    few input digits and a carry, a rule a small model learns partly from SFT and RL can finish.

    `show_work` is the fraction of `+`/`-` demonstrations (with 0 < b < 10) that count there in
    unit steps, `count 18 19 20 21`, instead of stating `21`: a second strategy, made of one
    simpler operation (add one), that RL can learn to prefer where it is more reliable. The
    math verifier reads the last number, so both forms are scored the same way.
    """

    kind = "structured"
    default_reward = (RewardComponent(verifier="math"),)

    def __init__(self, cfg: DomainConfig, seed: int) -> None:
        check_options(cfg, {"max_operand", "max_second", "ops", "show_work"})
        self.max_operand = option(cfg, "max_operand", 100, int)
        self.max_second = option(cfg, "max_second", self.max_operand, int)
        self.ops = option(cfg, "ops", "+-", str)
        if not self.ops or set(self.ops) - set("+-*"):
            raise ConfigError(f"domain '{cfg.name}': options.ops must use only + - *")
        self.show_work = option(cfg, "show_work", 0.0, float)
        if not 0.0 <= self.show_work <= 1.0:
            raise ConfigError(f"domain '{cfg.name}': options.show_work must be in [0, 1]")
        super().__init__(cfg, seed)

    def sample(self, rng: random.Random) -> Example:
        a, b = rng.randrange(self.max_operand), rng.randrange(self.max_second)
        op = rng.choice(self.ops)
        answer = {"+": a + b, "-": a - b, "*": a * b}[op]
        expr = f"{a}{op}{b}"
        demo = str(answer)
        if self.show_work and op in "+-" and 0 < b < 10 and rng.random() < self.show_work:
            step = 1 if op == "+" else -1
            demo = "count " + " ".join(str(a + step * i) for i in range(1, b + 1))
        return Example(
            id=expr,
            prompt=f"Q: {expr}=?\nA: ",
            columns={"answer": str(answer)},
            demonstration=demo,
        )
