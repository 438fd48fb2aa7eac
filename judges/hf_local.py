"""A judge that runs a local HF causal-LM folder in-process, with the HTTP judge's templates,
parser, cache and fallbacks. For small judges on the reward worker itself; serve big ones with
`vllm serve` (or `python -m judges.serve`) and use the `http` judge."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from judges.base import Verdict
from judges.core import Fallback, JudgeCore, Request
from judges.local_model import LocalGenerator, PromptTooLong


class HFLocalJudge:
    """Greedy judge replies from `model_path`, in batches of `batch_size` chats."""

    def __init__(
        self,
        model_path: str,
        mode: str = "pointwise",
        template: str | None = None,
        max_tokens: int = 64,
        batch_size: int = 8,
        dtype: str = "float32",
        threads: int | None = None,
        fallback: Fallback = "neutral",
        neutral_score: float = 0.5,
        reference_column: str = "reference",
        cache_size: int = 4096,
        cache_dir: str | None = None,
    ) -> None:
        self.core = JudgeCore(
            mode, template, fallback, neutral_score, reference_column, cache_size, cache_dir
        )
        self.generator = LocalGenerator(model_path, dtype, threads)
        self.max_tokens = max_tokens
        self.batch_size = max(1, batch_size)
        self.identity = self.core.identity(
            backend="hf_local", model=str(self.generator.path), max_tokens=max_tokens, dtype=dtype
        )

    def judge(
        self, prompts: Sequence[str], completions: Sequence[str], **columns: Sequence[Any]
    ) -> list[Verdict]:
        verdicts, requests = self.core.plan(self.identity, prompts, completions, columns)
        results: list[tuple[str | None, str]] = []
        for start in range(0, len(requests), self.batch_size):
            results += self._replies(requests[start : start + self.batch_size])
        replies = [reply for reply, _ in results]
        return self.core.finish(verdicts, requests, replies, [err for _, err in results])

    def _replies(self, chunk: Sequence[Request]) -> list[tuple[str | None, str]]:
        """(reply, "") per request; a prompt too long for the context fails alone, not its batch."""
        self.core.count(requests=len(chunk))
        try:
            return [
                (o.text, "")
                for o in self.generator.generate([r.messages for r in chunk], self.max_tokens)
            ]
        except PromptTooLong as exc:
            if len(chunk) == 1:
                return [(None, str(exc))]
            return [result for req in chunk for result in self._replies([req])]

    def take_counters(self) -> dict[str, int]:
        return self.core.take_counters()
