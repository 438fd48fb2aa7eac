"""Built-in `qa` domain: reading questions about a small procedurally generated world.

Each prompt describes a few people of a freshly drawn world (city, pet, colour, job) and asks
about one of them; the answer is an exact span of the description. The skill (find the right
person, then the asked attribute) is what RL can sharpen and what carries over to held-out
worlds, as extractive QA benchmarks test reading rather than memorised facts.
"""

from __future__ import annotations

import random

from omnisched.config.schema import DomainConfig, RewardComponent
from omnisched.domains.base import Domain, Example, check_options, option

SYLLABLES = ("ka", "lo", "mi", "ru", "te", "vo", "zan", "pel", "dor", "fi", "gu", "sha")
ATTRIBUTES = {  # attribute -> (question, values)
    "city": ("Where does {p} live?", ("Arlo", "Brill", "Cusk", "Dova", "Emmet", "Fane")),
    "pet": ("What pet does {p} have?", ("cat", "dog", "owl", "fox", "eel", "yak")),
    "color": ("What colour does {p} like?", ("red", "blue", "green", "gold", "grey")),
    "job": ("What is the job of {p}?", ("baker", "smith", "poet", "pilot", "nurse", "judge")),
}


def draw_person(rng: random.Random) -> tuple[str, dict[str, str]]:
    name = "".join(rng.choice(SYLLABLES) for _ in range(2)).capitalize()
    return name, {attr: rng.choice(values) for attr, (_, values) in ATTRIBUTES.items()}


class QADomain(Domain):
    """`people` people per prompt, `attributes` facts each; exact-match answers."""

    kind = "structured"
    default_reward = (RewardComponent(verifier="exact_match"),)

    def __init__(self, cfg: DomainConfig, seed: int) -> None:
        check_options(cfg, {"people", "attributes"})
        self.people = option(cfg, "people", 2, int)
        self.attributes = option(cfg, "attributes", 2, int)
        if not 1 <= self.attributes <= len(ATTRIBUTES) or self.people < 1:
            raise ValueError(f"options.attributes must be 1..{len(ATTRIBUTES)}, people >= 1")
        super().__init__(cfg, seed)

    def sample(self, rng: random.Random) -> Example:
        people: dict[str, dict[str, str]] = {}
        while len(people) < self.people:
            name, facts = draw_person(rng)
            people.setdefault(name, facts)
        attrs = rng.sample(sorted(ATTRIBUTES), self.attributes)
        context = " ".join(
            f"{name}: " + ", ".join(f"{a} {facts[a]}" for a in attrs) + "."
            for name, facts in people.items()
        )
        person, attr = rng.choice(sorted(people)), rng.choice(attrs)
        question = ATTRIBUTES[attr][0].format(p=person)
        answer = people[person][attr]
        return Example(
            id=f"{context}|{person}.{attr}",
            prompt=f"{context}\nQ: {question}\nA: ",
            columns={"answer": answer},
            demonstration=answer,
        )
