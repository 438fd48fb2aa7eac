"""`math` verifier: extract the final answer, check equivalence with the `answer` column.

Extraction, first match wins: the last `\\boxed{...}`, the last "answer is X" / "Answer: X",
the last number. Equivalence goes through math-verify (sympy): fractions, decimals, LaTeX,
percentages, sets, intervals. Its own timeouts use SIGALRM, so they apply on the main thread;
elsewhere `score_batch`'s per-item timeout (a killable worker process) bounds the time.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

from rewards.registry import register
from rewards.score import Score

ANSWER_IS = re.compile(r"(?:answer is|answer:)\s*:?\s*(.+)", re.IGNORECASE)
INTEGER = re.compile(r"-?\d{1,100}")  # both sides plain integers: compared without sympy
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?%?|-?\.\d+%?")
MAX_ANSWER_CHARS = 300  # longer "answers" are not worth a sympy parse (and could hang it)
TIMEOUT_S = 5


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i : j - 1].strip() if depth == 0 else None


def extract_answer(text: str) -> str | None:
    """The final answer in a completion, or None when it states none."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    stated = ANSWER_IS.findall(text)
    if stated:
        answer = stated[-1].strip().splitlines()[0].strip()
        return re.sub(r"[.\s]+$", "", answer).strip("$ ") or None
    numbers = NUMBER.findall(text)
    return numbers[-1].replace(",", "").replace(" ", "") if numbers else None


def _parse(text: str, timeout: int | None) -> list:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    text = text.strip()
    wrapped = text if text.startswith("$") or text.startswith("\\(") else f"${text}$"
    return parse(wrapped, extraction_config=configs, parsing_timeout=timeout)


def equivalent(gold: str, predicted: str) -> bool:
    """math-verify equivalence of two answer strings. Two plain integers are compared as ints:
    math-verify's verdict on them (tests/test_rewards_math.py checks the agreement) without its
    two sympy parses, which cost about 1 ms per answer (bench/bench_rewards.py: ~1k/s inline)."""
    gold, predicted = gold.strip(), predicted.strip()
    if INTEGER.fullmatch(gold) and INTEGER.fullmatch(predicted):
        return int(gold) == int(predicted)
    from math_verify import verify

    timeout = TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    gold_parsed, pred_parsed = _parse(gold, timeout), _parse(predicted, timeout)
    if not gold_parsed or not pred_parsed:
        return gold == predicted
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


@register("math")
def math_reward(completions: Sequence[str], answer: Sequence[str], **_: Any) -> list[Score]:
    """1.0 when the completion's final answer equals `answer` mathematically."""
    out = []
    for completion, gold in zip(completions, answer):
        predicted = extract_answer(completion)
        if predicted is None:
            out.append(Score(0.0, "no answer found"))
        elif len(predicted) > MAX_ANSWER_CHARS:
            out.append(Score(0.0, f"answer longer than {MAX_ANSWER_CHARS} characters"))
        elif equivalent(str(gold), predicted):
            out.append(Score(1.0))
        else:
            out.append(Score(0.0, f"answer {predicted[:60]!r} is not {str(gold)[:60]!r}"))
    return out
