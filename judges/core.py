"""What every model-backed judge shares: deduplication, cache, parsing, fallback and counters.

A backend (HTTP, local HF model) only turns chat messages into reply texts. `JudgeCore.plan`
turns a batch into unique requests that are not cached yet; `JudgeCore.finish` parses the
replies, caches the good verdicts and replaces each failure by the configured fallback:

- `fallback: neutral` -> `Verdict(neutral_score)`: the sample is scored as "average".
- `fallback: drop`    -> `Verdict(neutral_score, dropped=True)`: the scorer gives the sample no
  signal from this judge (it imputes the mean of the sample's prompt group).

Counters (per `take_counters` call): `requests` (calls to the model, retries and an HTTP
judge's model lookup included),
`cache_hits` (samples served from the cache), `retries`, `timeouts`, `http_errors`
(requests that failed after every retry), `parse_failures` (replies without a valid verdict),
`fallbacks` (samples that got the fallback verdict). For conversational rows (a `messages`
column) the task shown to the judge is the conversation, not the chat-template rendering.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from judges.base import Verdict
from judges.cache import VerdictCache, cache_key
from judges.prompting import JudgePrompt, load_template

Fallback = Literal["neutral", "drop"]
COUNTERS = (
    "requests",
    "cache_hits",
    "retries",
    "timeouts",
    "http_errors",
    "parse_failures",
    "fallbacks",
    "rate_wait_ms",  # time waited for the request / token rate limits and a server's Retry-After
)


@dataclass
class Request:
    """One unique item to judge and the batch positions that share it."""

    key: str
    messages: list[dict[str, str]]
    tag: str
    indices: list[int] = field(default_factory=list)


def conversation_text(messages: Sequence[dict[str, str]]) -> str:
    """A conversation as the judge reads it: one `role: content` block per message, rather
    than the policy's chat-template rendering with its special tokens."""
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


class JudgeCore:
    """Template, parser, cache, fallback and counters of one configured judge."""

    def __init__(
        self,
        mode: str = "pointwise",
        template: str | None = None,
        fallback: Fallback = "neutral",
        neutral_score: float = 0.5,
        reference_column: str = "reference",
        cache_size: int = 4096,
        cache_dir: str | None = None,
        rationale_chars: int = 300,
    ) -> None:
        if fallback not in ("neutral", "drop"):
            raise ValueError(f"judge fallback must be 'neutral' or 'drop', not '{fallback}'")
        if not 0.0 <= neutral_score <= 1.0:
            raise ValueError(f"judge neutral_score must lie in [0, 1], not {neutral_score}")
        self.prompt = JudgePrompt(load_template(template or mode), mode)
        self.fallback = fallback
        self.neutral_score = neutral_score
        self.reference_column = reference_column
        self.cache = VerdictCache(cache_size, cache_dir) if cache_size > 0 or cache_dir else None
        self.rationale_chars = rationale_chars
        self.counters: Counter[str] = Counter()
        self._lock = threading.Lock()

    def identity(self, **backend: Any) -> str:
        """Everything besides the item that changes a verdict: backend settings and template."""
        return json.dumps(
            {**backend, "mode": self.prompt.mode, "template": self.prompt.digest}, sort_keys=True
        )

    def references(self, n: int, columns: dict[str, Sequence[Any]]) -> list[str]:
        if self.reference_column in columns:
            return [str(r) for r in columns[self.reference_column]]
        if self.prompt.uses_reference:
            known = ", ".join(sorted(columns)) or "none"
            raise ValueError(
                f"the {self.prompt.mode} judge template needs the column "
                f"'{self.reference_column}' (option reference_column); columns: {known}"
            )
        return [""] * n

    def plan(
        self,
        identity: str,
        prompts: Sequence[str],
        completions: Sequence[str],
        columns: dict[str, Sequence[Any]],
    ) -> tuple[list[Verdict | None], list[Request]]:
        """Cached verdicts in place (None elsewhere) and the unique requests still to make."""
        references = self.references(len(completions), columns)
        if "messages" in columns:  # conversational rows: the judge reads the conversation
            prompts = [conversation_text(m) for m in columns["messages"]]
        keys = [cache_key(identity, p, c, r) for p, c, r in zip(prompts, completions, references)]
        cached = self.cache.get_many(keys) if self.cache is not None else {}
        verdicts: list[Verdict | None] = [cached.get(k) for k in keys]
        self.count(cache_hits=sum(v is not None for v in verdicts))
        todo: dict[str, Request] = {}
        for i, key in enumerate(keys):
            if verdicts[i] is not None:
                continue
            if key not in todo:
                messages, tag = self.prompt.render(prompts[i], completions[i], references[i])
                todo[key] = Request(key, messages, tag)
            todo[key].indices.append(i)
        return verdicts, list(todo.values())

    def finish(
        self,
        verdicts: list[Verdict | None],
        requests: Sequence[Request],
        replies: Sequence[str | None],
        errors: Sequence[str],
    ) -> list[Verdict]:
        """Fill `verdicts` from the replies (None = the request failed, see `errors`)."""
        fresh: dict[str, Verdict] = {}
        for req, reply, error in zip(requests, replies, errors):
            score = None if reply is None else self.prompt.parse(reply, req.tag)
            if reply is not None and score is None:
                self.count(parse_failures=1)
                error = f"no valid verdict at the end of the judge reply {reply[-80:]!r}"
            if score is None:
                verdict = self.fallback_verdict(error)
                self.count(fallbacks=len(req.indices))
            else:
                verdict = Verdict(score=score, rationale=reply[-self.rationale_chars :].strip())
                fresh[req.key] = verdict
            for i in req.indices:
                verdicts[i] = verdict
        if self.cache is not None:
            self.cache.put_many(fresh)
        return [v if v is not None else self.fallback_verdict("not judged") for v in verdicts]

    def fallback_verdict(self, reason: str) -> Verdict:
        return Verdict(
            score=self.neutral_score,
            rationale=f"judge failed ({self.fallback}): {reason}",
            dropped=self.fallback == "drop",
        )

    def count(self, **deltas: int) -> None:
        with self._lock:
            self.counters.update(deltas)

    def take_counters(self) -> dict[str, int]:
        """Counts since the last call, every known counter present (zeros included)."""
        with self._lock:
            out = {name: self.counters.get(name, 0) for name in COUNTERS}
            self.counters.clear()
        return out
