"""A deterministic rubric judge for short creative lines: validity per line, diversity per group.

validity = mean of (keyword used, length in range, words in the lexicon, ends with '.',
no word repeated back to back); diversity = 1 / (copies of this line within its GRPO group: the
`group_id` column, else the prompt).
score = validity * ((1 - w) + w * diversity), w = `diversity_weight`: diversity pays only for
valid lines, so varied garbage earns nothing extra.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from judges.base import Verdict

_WORDS = """
a the of in on over under with and by to at my our her his its sea moon sun star wind rain
river stone tree bird night dawn fire snow road sky field song light storm cloud leaf wave
hill rose bell ship red blue gold grey silver dark bright quiet wild old cold warm soft slow
sings falls burns drifts sleeps dreams flows glows waits rises shines turns calls breaks
softly slowly always never again alone home away
"""
LEXICON = frozenset(_WORDS.split())
WORD = re.compile(r"[a-z]+")


class CreativeRubricJudge:
    """Rubric for the built-in `creative` domain (column `keyword`)."""

    def __init__(
        self, min_words: int = 4, max_words: int = 10, diversity_weight: float = 0.3
    ) -> None:
        self.min_words = min_words
        self.max_words = max_words
        self.diversity_weight = diversity_weight

    def validity(self, completion: str, keyword: str) -> tuple[float, list[str]]:
        text = completion.strip()
        words = WORD.findall(text.lower())
        checks = {
            "keyword": keyword in words,
            "length": self.min_words <= len(words) <= self.max_words,
            "lexicon": bool(words) and sum(w in LEXICON for w in words) / len(words),
            "period": text.endswith(".") and text.count(".") == 1,
            "no-repeat": all(a != b for a, b in itertools.pairwise(words)),
            "clean": text == " ".join(text.split()) and re.fullmatch(r"[a-z .]*", text) is not None,
        }
        failed = [k for k, v in checks.items() if v is not True and v < 1]
        return sum(float(v) for v in checks.values()) / len(checks), failed

    def judge(
        self, prompts: Sequence[str], completions: Sequence[str], **columns: Sequence[Any]
    ) -> list[Verdict]:
        keywords = columns.get("keyword") or [""] * len(completions)
        groups = columns.get("group_id") or prompts  # one draw of a prompt = one group
        copies = Counter((g, c.strip()) for g, c in zip(groups, completions))
        verdicts = []
        for group, completion, keyword in zip(groups, completions, keywords):
            valid, failed = self.validity(completion, str(keyword))
            diversity = 1.0 / copies[(group, completion.strip())]
            w = self.diversity_weight
            score = valid * ((1 - w) + w * diversity)
            why = (
                f"validity {valid:.2f} (failed: {', '.join(failed) or 'none'}), "
                f"diversity {diversity:.2f}"
            )
            verdicts.append(Verdict(score=score, rationale=why))
        return verdicts
