"""Built-in `code` domain: write a Python expression `f(x)` that matches given input/output pairs.

The prompt shows f(0), f(1), f(2) (the offset, then the slope as one subtraction); hidden
tests check two more inputs, so echoing the examples as a lookup table does not pass. The
code verifier runs the completion in the sandbox.
"""

from __future__ import annotations

import random

from omnisched.config.schema import DomainConfig, RewardComponent
from omnisched.domains.base import Domain, Example, check_options, option

CODE_PREFIX = "def f(x):\n    return "
SHOWN = (0, 1, 2)
HIDDEN = (5, 9)


class CodeDomain(Domain):
    """Functions `a*x+b` (and `x*x+b` when `quadratic`) with small integer coefficients."""

    kind = "structured"
    default_reward = (RewardComponent(verifier="code"),)

    def __init__(self, cfg: DomainConfig, seed: int) -> None:
        check_options(cfg, {"max_slope", "max_offset", "quadratic"})
        self.max_slope = option(cfg, "max_slope", 6, int)
        self.max_offset = option(cfg, "max_offset", 20, int)
        self.quadratic = option(cfg, "quadratic", False, bool)
        super().__init__(cfg, seed)

    def sample(self, rng: random.Random) -> Example:
        b = rng.randrange(self.max_offset)
        if self.quadratic and rng.random() < 0.25:
            source = f"x*x+{b}"
        else:
            source = f"{rng.randrange(1, self.max_slope)}*x+{b}"
        fn = eval(f"lambda x: {source}")  # our own generated source, never model output
        shown = " ".join(f"f({x})={fn(x)}" for x in SHOWN)
        tests = "\n".join(f"assert f({x}) == {fn(x)}" for x in (*SHOWN, *HIDDEN))
        return Example(
            id=source,
            prompt=f"{shown}\n{CODE_PREFIX}",
            columns={"tests": tests, "code_prefix": CODE_PREFIX},
            demonstration=source,
        )
