"""Built-in `qa` domain: short factual questions about a procedurally generated world.

The world (people and their city, pet, colour, job) is fixed by the seed. The warm start is
taught every fact in two phrasings; RL asks with the first phrasing only; the held-out eval asks
with the second, so it measures whether sharpened recall carries over to questions RL never saw.
"""

from __future__ import annotations

import random

from omnisched.config.schema import DomainConfig, RewardComponent
from omnisched.domains.base import Domain, Example, _stable_seed, check_options, option

SYLLABLES = ("ka", "lo", "mi", "ru", "te", "vo", "zan", "pel", "dor", "fi", "gu", "sha")
ATTRIBUTES = {  # attribute -> (question templates, values); template 0 trains, 1 evaluates
    "city": (
        ("Where does {p} live?", "In which city does {p} live?"),
        ("Arlo", "Brill", "Cusk", "Dova", "Emmet", "Fane"),
    ),
    "pet": (
        ("What pet does {p} have?", "Which animal does {p} keep?"),
        ("cat", "dog", "owl", "fox", "eel", "yak"),
    ),
    "color": (
        ("What is the favourite colour of {p}?", "Which colour does {p} like best?"),
        ("red", "blue", "green", "gold", "grey"),
    ),
    "job": (
        ("What is the job of {p}?", "What does {p} do for work?"),
        ("baker", "smith", "poet", "pilot", "nurse", "judge"),
    ),
}


def make_world(num_people: int, seed: int) -> dict[str, dict[str, str]]:
    rng = random.Random(seed)
    people: dict[str, dict[str, str]] = {}
    while len(people) < num_people:
        name = "".join(rng.choice(SYLLABLES) for _ in range(2)).capitalize()
        people.setdefault(name, {a: rng.choice(vals) for a, (_, vals) in ATTRIBUTES.items()})
    return people


class QADomain(Domain):
    """Exact-match answers about `num_people` people with four attributes each."""

    kind = "structured"
    default_reward = (RewardComponent(verifier="exact_match"),)

    def __init__(self, cfg: DomainConfig, seed: int) -> None:
        check_options(cfg, {"num_people", "world_seed"})
        num_people = option(cfg, "num_people", 32, int)
        world_seed = option(cfg, "world_seed", _stable_seed("world", seed) % 2**31, int)
        self.world = make_world(num_people, world_seed)
        self.names = sorted(self.world)
        super().__init__(cfg, seed)

    def sample(self, rng: random.Random) -> Example:
        return self.ask(rng.choice(self.names), rng.choice(sorted(ATTRIBUTES)), template=0)

    def ask(self, person: str, attr: str, template: int) -> Example:
        question = ATTRIBUTES[attr][0][template].format(p=person)
        answer = self.world[person][attr]
        return Example(
            id=f"{person}.{attr}.{template}",
            prompt=f"Q: {question}\nA: ",
            columns={"answer": answer},
            demonstration=answer,
        )

    def _build_eval_set(self, size: int) -> list[Example]:
        """Questions in the second phrasing, which RL never asks."""
        rng = random.Random(_stable_seed(self.name, "eval", self.seed))
        pairs = [(p, a) for p in self.names for a in sorted(ATTRIBUTES)]
        rng.shuffle(pairs)
        return [self.ask(p, a, template=1) for p, a in pairs[:size]]

    def demonstrations(self, rng: random.Random, n: int) -> list[tuple[str, str]]:
        """Every fact in both phrasings: the knowledge the base model is taught before RL, as
        pre-training teaches the knowledge a QA benchmark asks about."""
        out = []
        for _ in range(n):
            ex = self.ask(rng.choice(self.names), rng.choice(sorted(ATTRIBUTES)), rng.randrange(2))
            out.append((ex.prompt, ex.demonstration or ""))
        return out
