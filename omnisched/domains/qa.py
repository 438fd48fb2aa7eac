"""Built-in `qa` domain: short factual questions about a procedurally generated world.

The world (people and their city, pet, colour, job) is fixed by the seed; the warm start sees
demonstrations of the facts, RL sharpens recall, and the eval set holds out question instances.
"""

from __future__ import annotations

import random

from omnisched.config.schema import DomainConfig, RewardComponent
from omnisched.domains.base import Domain, Example, _stable_seed, check_options, option

SYLLABLES = ("ka", "lo", "mi", "ru", "te", "vo", "zan", "pel", "dor", "fi", "gu", "sha")
ATTRIBUTES = {
    "city": ("Where does {p} live?", ("Arlo", "Brill", "Cusk", "Dova", "Emmet", "Fane")),
    "pet": ("What pet does {p} have?", ("cat", "dog", "owl", "fox", "eel", "yak")),
    "color": ("What is the favourite colour of {p}?", ("red", "blue", "green", "gold", "grey")),
    "job": ("What is the job of {p}?", ("baker", "smith", "poet", "pilot", "nurse", "judge")),
}


def make_world(num_people: int, seed: int) -> dict[str, dict[str, str]]:
    rng = random.Random(seed)
    people: dict[str, dict[str, str]] = {}
    while len(people) < num_people:
        name = "".join(rng.choice(SYLLABLES) for _ in range(2)).capitalize()
        people.setdefault(name, {attr: rng.choice(vals) for attr, (_, vals) in ATTRIBUTES.items()})
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
        person = rng.choice(self.names)
        attr = rng.choice(sorted(ATTRIBUTES))
        question = ATTRIBUTES[attr][0].format(p=person)
        answer = self.world[person][attr]
        return Example(
            id=f"{person}.{attr}",
            prompt=f"Q: {question}\nA: ",
            columns={"answer": answer},
            demonstration=answer,
        )

    def demonstrations(self, rng: random.Random, n: int) -> list[tuple[str, str]]:
        """Facts come from every question, the held-out ones included: the eval tests recall of
        knowledge the base model was taught, as a QA benchmark tests pre-trained knowledge."""
        out = []
        for _ in range(n):
            ex = self.sample(rng)
            out.append((ex.prompt, ex.demonstration or ""))
        return out
