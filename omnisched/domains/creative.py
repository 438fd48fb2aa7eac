"""Built-in `creative` domain: write a short line on a topic that uses a given word.

Open-ended: many completions are good, and the rubric judge rewards valid lines that differ
from the rest of their group, so entropy collapse shows up as a lower score.
"""

from __future__ import annotations

import random

from omnisched.config.schema import DomainConfig, RewardComponent
from omnisched.domains.base import Domain, Example, check_options

TOPICS = ("sea", "moon", "night", "storm", "river", "field", "bird", "snow", "road", "fire")
KEYWORDS = ("quiet", "gold", "dreams", "slowly", "again", "wild", "home", "glows", "cold", "bell")
NOUNS = ("sea", "moon", "sun", "star", "wind", "rain", "river", "stone", "tree", "bird", "sky")
ADJS = ("red", "blue", "gold", "grey", "dark", "bright", "quiet", "wild", "old", "cold", "soft")
VERBS = ("sings", "falls", "burns", "drifts", "sleeps", "dreams", "flows", "glows", "waits")
ADVS = ("softly", "slowly", "always", "never", "again", "alone", "home", "away")


def compose_line(rng: random.Random, topic: str, keyword: str) -> str:
    """A valid demonstration line: 'the <adj> <topic> <verb> <adv> .' with the keyword placed."""
    words = ["the", rng.choice(ADJS), topic, rng.choice(VERBS), rng.choice(ADVS)]
    if keyword not in words:
        slot = {"quiet": 1, "gold": 1, "wild": 1, "cold": 1, "dreams": 3, "glows": 3}.get(
            keyword, 4
        )
        words[slot] = keyword
    if rng.random() < 0.5:
        words += ["over", "the", rng.choice(NOUNS)]
    return " ".join(words) + "."


class CreativeDomain(Domain):
    kind = "open"
    default_reward = (RewardComponent(judge="creative_rubric"),)

    def __init__(self, cfg: DomainConfig, seed: int) -> None:
        check_options(cfg, set())
        super().__init__(cfg, seed)

    def sample(self, rng: random.Random) -> Example:
        topic, keyword = rng.choice(TOPICS), rng.choice(KEYWORDS)
        return Example(
            id=f"{topic}.{keyword}",
            prompt=f"Write a line about the {topic} with the word {keyword}.\n",
            columns={"keyword": keyword},
            demonstration=compose_line(rng, topic, keyword),
        )
