"""`code` verifier: run each completion against its tests in the sandbox; 1.0 iff all pass.

Columns: `tests` (Python source with asserts, or HumanEval style `def check(candidate)` with
`entry_point`), optional `entry_point`, optional `code_prefix` (prepended to the completion,
e.g. HumanEval's prompt or `"def f(x):\n    return "`), optional `timeout` (seconds).
Markdown code fences around the completion are stripped.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rewards.execution import isolated
from rewards.registry import register
from rewards.sandbox import Sandbox, SandboxLimits
from rewards.score import Score

FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_sandbox: Sandbox | None = None
_sandbox_lock = threading.Lock()


def configure_sandbox(limits: SandboxLimits) -> Sandbox:
    """Replace the shared sandbox used by the `code` verifier (closing the old one)."""
    global _sandbox
    with _sandbox_lock:
        if _sandbox is not None:
            _sandbox.close()
        _sandbox = Sandbox(limits)
        return _sandbox


def shared_sandbox() -> Sandbox:
    global _sandbox
    with _sandbox_lock:
        if _sandbox is None:
            _sandbox = Sandbox()
        return _sandbox


def strip_fences(completion: str) -> str:
    """The code inside the first fenced block (python-tagged blocks first), else the text."""
    blocks = FENCE.findall(completion)
    if not blocks:
        return completion
    python = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    return (python or [blocks[0][1]])[0]


def build_tests(tests: str, entry_point: str | None) -> str:
    """HumanEval-style tests define `check(candidate)`: call it on the entry point."""
    if entry_point and re.search(r"^def check\(", tests, re.MULTILINE):
        return f"{tests}\n\ncheck({entry_point})\n"
    return tests


@register("code")
@isolated
def code_reward(
    completions: Sequence[str],
    tests: Sequence[str],
    entry_point: Sequence[str | None] | None = None,
    code_prefix: Sequence[str | None] | None = None,
    timeout: Sequence[float | None] | None = None,
    **_: Any,
) -> list[Score]:
    """1.0 when the completion passes all of its tests in the sandbox, else 0.0 with the reason."""
    n = len(completions)
    entry = list(entry_point or [None] * n)
    prefix = list(code_prefix or [None] * n)
    limit = list(timeout or [None] * n)
    sandbox = shared_sandbox()

    def one(i: int) -> Score:
        program = (prefix[i] or "") + strip_fences(completions[i])
        result = sandbox.run(program, build_tests(tests[i], entry[i]), limit[i])
        return Score(1.0) if result.passed else Score(0.0, result.reason)

    if n == 1:
        return [one(0)]
    with ThreadPoolExecutor(max_workers=min(n, os.cpu_count() or 2)) as pool:
        return list(pool.map(one, range(n)))
