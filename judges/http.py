"""A judge behind any OpenAI-compatible chat-completions server (`vllm serve`, `judges.serve`).

Requests run concurrently on asyncio, at most `concurrency` in flight, and, when set, at most
`requests_per_minute` and `tokens_per_minute` (prompt characters / 4 + `max_tokens`, the
budget a provider counts against), smoothed: a request waits for its share (`rate_wait_ms`
counts the waiting). Each has a timeout and is retried with exponential backoff (with jitter,
capped at `max_backoff`) on connection errors, timeouts, 429 and 5xx; other 4xx are final. A
server's `Retry-After` (seconds or an HTTP date) is honoured instead, up to `max_retry_after`,
and that wait counts in `rate_wait_ms` too (the server's rate limit). Limits, buckets and
counters belong to one judge instance: each reward worker builds its own per domain. A
request that still fails, or a reply without a valid verdict, gets the fallback verdict (see
`judges.core`), never an exception: a judge outage degrades the reward, it does not stop the
run. The counters say how much.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import email.utils
import os
import random
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from judges.base import Verdict
from judges.core import Fallback, JudgeCore, Request

RETRYABLE = frozenset({408, 409, 429, 500, 502, 503, 504})
T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion from sync code, even when this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@dataclass(frozen=True)
class Call:
    """One API request: chat requests (with a payload) count `tokens` against the limits."""

    method: str
    path: str
    payload: dict[str, Any] | None = None
    tokens: float = 0.0


class HttpJudge:
    """Pointwise (1-10 score) or pairwise (vs the `reference_column`) judge over HTTP."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        model: str | None = None,
        mode: str = "pointwise",
        template: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_retry_after: float = 120.0,
        max_tokens: int = 256,
        temperature: float = 0.0,
        fallback: Fallback = "neutral",
        neutral_score: float = 0.5,
        reference_column: str = "reference",
        cache_size: int = 4096,
        cache_dir: str | None = None,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
    ) -> None:
        if concurrency < 1 or retries < 0 or timeout <= 0:
            raise ValueError("http judge needs concurrency >= 1, retries >= 0 and timeout > 0")
        for name, value in (("requests", requests_per_minute), ("tokens", tokens_per_minute)):
            if value is not None and value <= 0:
                raise ValueError(f"http judge: {name}_per_minute must be > 0, got {value}")
        if max_retry_after < 0:
            raise ValueError(f"http judge: max_retry_after must be >= 0, got {max_retry_after}")
        self.limits = (requests_per_minute, tokens_per_minute)
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.model = model
        self.api_key = os.environ.get(api_key_env, "")
        self.concurrency = concurrency
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.core = JudgeCore(
            mode, template, fallback, neutral_score, reference_column, cache_size, cache_dir
        )

    def judge(
        self, prompts: Sequence[str], completions: Sequence[str], **columns: Sequence[Any]
    ) -> list[Verdict]:
        return run_sync(self.ajudge(prompts, completions, **columns))

    def take_counters(self) -> dict[str, int]:
        return self.core.take_counters()

    async def ajudge(
        self, prompts: Sequence[str], completions: Sequence[str], **columns: Sequence[Any]
    ) -> list[Verdict]:
        """`judge` for callers that already run an event loop."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        self.limiter = RateLimiter(*self.limits)  # its clock lives in this call's event loop
        async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
            model, error = await self._model(session)
            if model is None:
                self.core.count(fallbacks=len(completions))
                return [self.core.fallback_verdict(error) for _ in completions]
            identity = self.core.identity(
                backend="openai", model=model, max_tokens=self.max_tokens, temp=self.temperature
            )
            verdicts, requests = self.core.plan(identity, prompts, completions, columns)
            sem = asyncio.Semaphore(self.concurrency)
            results = await asyncio.gather(
                *(self._complete(session, sem, model, req) for req in requests)
            )
        replies = [reply for reply, _ in results]
        errors = [err for _, err in results]
        return self.core.finish(verdicts, requests, replies, errors)

    async def _model(self, session: aiohttp.ClientSession) -> tuple[str | None, str]:
        """The configured model, else the first one the server lists (as `vllm serve` has one)."""
        if self.model is not None:
            return self.model, ""
        body, error = await self._call(session, None, Call("GET", "/v1/models"))
        try:
            self.model = str(body["data"][0]["id"]) if body is not None else None
        except (KeyError, IndexError, TypeError):
            error = f"GET /v1/models answered without a model: {str(body)[:120]}"
        return self.model, error

    async def _complete(
        self, session: aiohttp.ClientSession, sem: asyncio.Semaphore, model: str, req: Request
    ) -> tuple[str | None, str]:
        payload = {
            "model": model,
            "messages": req.messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        tokens = sum(len(m["content"]) for m in req.messages) / 4 + self.max_tokens
        body, error = await self._call(
            session, sem, Call("POST", "/v1/chat/completions", payload, tokens)
        )
        if body is None:
            return None, error
        try:
            return str(body["choices"][0]["message"]["content"] or ""), ""
        except (KeyError, IndexError, TypeError):
            return None, f"malformed chat completion: {str(body)[:120]}"

    async def _call(
        self, session: aiohttp.ClientSession, sem: asyncio.Semaphore | None, call: Call
    ) -> tuple[Any, str]:
        """(JSON body, "") or (None, why) after `retries` retries; never raises."""
        error, delay, asked = "", 0.0, False  # asked: the server set the delay (Retry-After)
        for attempt in range(self.retries + 1):
            if attempt:
                self.core.count(retries=1)
                if asked:  # the server's rate limit: counted as rate-limit waiting
                    self.core.count(rate_wait_ms=int(1000 * delay))
                await asyncio.sleep(delay)
            if call.payload is not None:  # chat requests count against the rate limits
                waited = await self.limiter.acquire(call.tokens)
                if waited:
                    self.core.count(rate_wait_ms=int(1000 * waited))
            status, body, error, retry_after = await self._attempt(session, sem, call)
            if status == 200:
                return body, ""
            if status is not None and status not in RETRYABLE:
                break
            delay, asked = self._delay(attempt, retry_after), retry_after is not None
        self.core.count(http_errors=1)
        return None, error

    async def _attempt(
        self, session: aiohttp.ClientSession, sem: asyncio.Semaphore | None, call: Call
    ) -> tuple[int | None, Any, str, float | None]:
        """One request: (status or None when no answer came, JSON body, error, Retry-After)."""
        method, path, payload = call.method, call.path, call.payload
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with sem or _NoLimit():
                self.core.count(requests=1)
                async with session.request(
                    method, self.base_url + path, json=payload, timeout=timeout
                ) as resp:
                    if resp.status == 200:
                        return 200, await resp.json(content_type=None), "", None
                    text = (await resp.text())[:200]
                    after = _seconds(resp.headers.get("Retry-After"))
                    return resp.status, None, f"HTTP {resp.status} from {path}: {text}", after
        except TimeoutError:
            self.core.count(timeouts=1)
            return None, None, f"{method} {path} timed out after {self.timeout:g}s", None
        except (aiohttp.ClientError, ValueError) as exc:
            return None, None, f"{method} {path} failed: {type(exc).__name__}: {exc}", None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """backoff * 2^attempt, jittered in [50%, 100%], capped at max_backoff; a server's
        Retry-After wins, capped at max_retry_after (a 429 may ask for a minute)."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)


class RateLimiter:
    """Token buckets for requests and tokens per minute: each refills continuously and holds at
    most one second's worth (at least one request), so a burst cannot spend a minute's budget
    at once; `acquire` waits until both have room. No limits: never waits."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None):
        self.rates = [r / 60.0 if r else None for r in (requests_per_minute, tokens_per_minute)]
        self.capacity = [max(1.0, r) if r else 0.0 for r in self.rates]
        self.level = list(self.capacity)
        self.stamp: float | None = None
        self.lock = asyncio.Lock()

    async def acquire(self, tokens: float) -> float:
        """Take one request and `tokens`; returns the seconds it waited."""
        if not any(self.rates):
            return 0.0
        loop = asyncio.get_running_loop()
        need = [1.0, tokens]
        waited = 0.0
        async with self.lock:  # first come, first served
            while True:
                now = loop.time()
                if self.stamp is not None:
                    for i, rate in enumerate(self.rates):
                        if rate:
                            self.level[i] = min(
                                self.capacity[i], self.level[i] + rate * (now - self.stamp)
                            )
                self.stamp = now
                short = [
                    (min(need[i], self.capacity[i]) - self.level[i]) / rate
                    for i, rate in enumerate(self.rates)
                    if rate and self.level[i] < min(need[i], self.capacity[i])
                ]
                if not short:
                    for i, rate in enumerate(self.rates):
                        if rate:
                            self.level[i] -= min(need[i], self.capacity[i])
                    return waited
                pause = max(short)
                waited += pause
                await asyncio.sleep(pause)


class _NoLimit:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


def _seconds(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header in seconds from `now` (default: the clock): delay-seconds or an
    HTTP date (RFC 9110); None when absent or unreadable."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC as well
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
