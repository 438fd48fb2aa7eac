"""Built-in `code` domain: write a Python expression `f(x)` that matches given input/output pairs.

The prompt shows f(0), f(1), f(2) (the offset, then the slope as one subtraction); hidden
tests check two more inputs, so echoing the examples as a lookup table does not pass. The
code verifier runs the completion in the sandbox.
"""

from __future__ import annotations

import random

from omnisched.config.schema import DomainConfig, RewardComponent
from omnisched.domains.base import Domain, Example, check_options, option
from omnisched.errors import ConfigError

CODE_PREFIX = "def f(x):\n    return "
SHOWN = (0, 1, 2)
HIDDEN = (5, 9)


class CodeDomain(Domain):
    """Functions `a*x+b` (and `x*x+b` when `quadratic`) with small integer coefficients.

    `show_work` is the fraction of linear demonstrations written `(f(1)-f(0))*x+f(0)` with the
    shown numbers, i.e. the slope left as a subtraction: a strategy that only needs copying
    and so generalises to unseen functions, while `a*x+b` needs the subtraction done. A tiny
    model guesses slopes nearly at random (measured: slope right in 16% of held-out samples,
    offset right in 94%), so with both forms in its SFT data RL has a real choice to learn.
    """

    kind = "structured"
    default_reward = (RewardComponent(verifier="code"),)

    def __init__(self, cfg: DomainConfig, seed: int) -> None:
        check_options(cfg, {"max_slope", "max_offset", "quadratic", "show_work"})
        self.max_slope = option(cfg, "max_slope", 6, int)
        self.max_offset = option(cfg, "max_offset", 20, int)
        self.quadratic = option(cfg, "quadratic", False, bool)
        self.show_work = option(cfg, "show_work", 0.0, float)
        if not 0.0 <= self.show_work <= 1.0:
            raise ConfigError(f"domain '{cfg.name}': options.show_work must be in [0, 1]")
        super().__init__(cfg, seed)

    def sample(self, rng: random.Random) -> Example:
        b = rng.randrange(self.max_offset)
        slope = None
        if self.quadratic and rng.random() < 0.25:
            source = f"x*x+{b}"
        else:
            slope = rng.randrange(1, self.max_slope)
            source = f"{slope}*x+{b}"
        fn = eval(f"lambda x: {source}")  # our own generated source, never model output
        shown = " ".join(f"f({x})={fn(x)}" for x in SHOWN)
        demo = source
        if slope is not None and self.show_work and rng.random() < self.show_work:
            demo = f"({fn(1)}-{fn(0)})*x+{b}"  # the slope left as the subtraction it came from
        tests = "\n".join(f"assert f({x}) == {fn(x)}" for x in (*SHOWN, *HIDDEN))
        return Example(
            id=source,
            prompt=f"{shown}\n{CODE_PREFIX}",
            columns={"tests": tests, "code_prefix": CODE_PREFIX},
            demonstration=demo,
        )
