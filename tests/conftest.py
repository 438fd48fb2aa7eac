"""Shared test helpers: tiny-model fixtures that check what they trained.

A tiny model's greedy output is decided by its logits' top-2 gap; where that gap is within
float noise (summation order differs between machines, kernels and batch layouts), two correct
engines can disagree. Fixtures here therefore verify their models: the random model has a clear
gap on every prompt the tests decode, and the trained copy model copies every word the tests
use by a clear margin, training longer (up to a bound) until it does, else failing loudly.
"""

from __future__ import annotations

import atexit
import itertools
import os
import random
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from omnisched.exit_noise import drop_teardown_noise

ROOT = Path(__file__).resolve().parents[1]  # the checkout
TINY_RECIPE = ROOT / "recipes/tiny.yaml"
PAPER_RECIPE = ROOT / "recipes/omni-thinker-7b.yaml"

WORDS = ["".join(t) for t in itertools.product("abcdef", repeat=3)]
random.Random(0).shuffle(WORDS)
COPY_TRAIN, COPY_HELD_OUT = WORDS[:180], WORDS[180:]
GAP = 0.05  # logits: far above fp32 and bf16 rounding of a tiny model, far below real margins

# Machines of this kind export PYTHONDONTWRITEBYTECODE=1 and the install runs pip with
# --no-compile, so no .pyc existed and every process the suite starts (xdist workers, `omnisched`
# subprocesses, Ray actors, vLLM engine cores: well over a hundred) compiled torch, transformers
# and vLLM from source again: `from transformers import AutoModelForCausalLM` took 10.7 s,
# `import vllm` 13.5 s, against 4.1 s each from cached bytecode. The suite lets Python cache
# what it imports (.venv/ and __pycache__/ are git-ignored); children inherit the environment.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False


DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _distributed_env_restored():
    """Each test leaves torch.distributed's variables as it found them: a DeepSpeed learner sets
    LOCAL_RANK (and accelerate RANK, WORLD_SIZE, ...) in this process, after which TRL's
    accelerate, in a later test of the same xdist worker, takes the process for a multi-node
    launch and stops for want of MASTER_ADDR."""
    saved = {k: os.environ.get(k) for k in DIST_VARS}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def run_python(*args: str, cwd: Path | str | None = None, timeout: float = 120):
    """`python ARGS` in a fresh interpreter (this venv's), output captured; fails the test with
    the end of its stderr unless it exits 0. Returns the completed process. torch.distributed's
    variables are not passed on: a DeepSpeed learner built earlier in this pytest process sets
    RANK / WORLD_SIZE, which would make TRL (accelerate) in the child look for a process group."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def bench_smoke(script: str, out_dir: Path, *args: str, timeout: float = 300):
    """`bench/SCRIPT --smoke ARGS --threads 1 --out-dir OUT_DIR`, which must exit 0."""
    root = Path(__file__).resolve().parents[1]
    bench = str(root / "bench" / script)
    return run_python(
        bench,
        "--smoke",
        *args,
        "--threads",
        "1",
        "--out-dir",
        str(out_dir),
        cwd=root,
        timeout=timeout,
    )


def start_run(tmp_path: Path, recipe: Path, *args: str) -> subprocess.Popen:
    """`omnisched run RECIPE -q ARGS` in the background, its output in tmp_path/std{out,err}.txt,
    in a process group of its own (a SIGKILL of the group takes Ray's children too)."""
    cmd = [sys.executable, "-m", "omnisched.cli", "run", str(recipe), "-q", *args]
    return subprocess.Popen(
        cmd,
        cwd=tmp_path,
        stdout=(tmp_path / "stdout.txt").open("w"),
        stderr=(tmp_path / "stderr.txt").open("w"),
        start_new_session=True,
    )


def train_steps(run_dir: Path) -> list[int]:
    """The steps of the `kind: train` records logged so far."""
    import json

    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r["step"] for r in rows if r["kind"] == "train"]


def wait_for(cond, proc: subprocess.Popen | None = None, timeout: float = 300.0) -> None:
    """Poll `cond` until it holds; fail on the timeout or when `proc` exits first."""
    import time

    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out waiting"
        assert proc is None or proc.poll() is None, f"the run exited with {proc.returncode}"
        time.sleep(0.2)


def run_dir_of(tmp_path: Path, proc: subprocess.Popen, pattern: str = "tiny-*") -> Path:
    """The run directory a background run (`start_run`) creates under tmp_path/runs."""
    wait_for(lambda: any((tmp_path / "runs").glob(pattern)), proc)
    return next((tmp_path / "runs").glob(pattern))


def ray_actor(name: str):
    """The process of a Ray actor whose command line contains `name` (e.g. ray::RolloutWorker),
    or None."""
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        if any(name in part for part in (p.info["cmdline"] or [])):
            return p
    return None


def run_records(run_dir: Path, kind: str) -> list[dict]:
    """The records of one kind ("train", "eval") in a run's metrics.jsonl, in order."""
    import json

    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def free_port() -> int:
    """A TCP port on loopback that is free now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_completion_fields(engine, prompts: Sequence[str], out, n: int, max_new_tokens: int):
    """What every `RolloutEngine` promises of `generate`'s output: `n` completions per prompt, in
    order, with the prompt's ids, at most `max_new_tokens` tokens and one logprob and entropy per
    token (logprobs <= 0)."""
    assert [len(group) for group in out] == [n] * len(prompts)
    for prompt, group in zip(prompts, out, strict=True):
        for c in group:
            assert c.prompt == prompt and c.prompt_ids == engine.tokenizer.encode(prompt)
            assert 1 <= len(c.token_ids) <= max_new_tokens
            assert len(c.logprobs) == len(c.entropies) == len(c.token_ids)
            assert all(lp <= 0 for lp in c.logprobs)


def greedy_gaps(model, prompt_ids: Sequence[int], token_ids: Sequence[int]) -> list[float]:
    """Teacher-forced along `token_ids`: logit(chosen) - max(logit of any other token) at each
    position. All > 0 means `token_ids` is exactly what greedy decoding writes."""
    import torch

    ids = torch.tensor([list(prompt_ids) + list(token_ids)])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1 : -1].float()
    chosen = torch.tensor(list(token_ids)).unsqueeze(-1)
    picked = logits.gather(-1, chosen).squeeze(-1)
    other = logits.scatter(-1, chosen, float("-inf")).amax(-1)
    return (picked - other).tolist()


def clear_greedy(folder: str, prompts: Sequence[str], max_new_tokens: int) -> float:
    """The smallest top-2 gap along the fp32 greedy continuations of `prompts`."""
    from omnisched.model import load_model
    from omnisched.rollout import HFEngine, SamplingParams

    model, _ = load_model(folder, "float32")
    engine = HFEngine(folder, dtype="float32")
    out = engine.generate(
        list(prompts), SamplingParams(max_new_tokens=max_new_tokens, temperature=0)
    )
    return min(min(greedy_gaps(model, g[0].prompt_ids, g[0].token_ids)) for g in out)


def random_model(tiny, root: Path, prompts: Sequence[str], max_new_tokens: int) -> str:
    """A randomly initialised tiny model (the first seed from 0) whose greedy continuations of
    `prompts` have no near-tie, so every engine must decode them identically."""
    from omnisched.model import build_char_tokenizer, build_tiny_model, save_model

    tok = build_char_tokenizer()
    for seed in range(8):
        folder = str(save_model(build_tiny_model(tiny, tok, seed=seed), tok, root / f"r{seed}"))
        if clear_greedy(folder, prompts, max_new_tokens) > GAP:
            return folder
    raise RuntimeError(f"no random tiny model among 8 seeds decodes {prompts} without a near-tie")


def copy_model(tiny, cache: Path, words: Sequence[str], steps: int = 60) -> str:
    """The tiny model warm-started to copy 3-letter words (`w>` -> `w` EOS), verified: greedy
    copies every word in `words` and stops, each token by a margin of 1 logit. Trains with
    doubled steps (each a cached warm start of its own) until that holds."""
    from omnisched.config.schema import ModelConfig, WarmStartConfig
    from omnisched.model import load_model, warm_start

    demos = [(f"{w}>", w) for w in COPY_TRAIN]
    for _ in range(3):
        ws = WarmStartConfig(steps=steps, batch_size=32, lr=3e-3, cache_dir=cache)
        folder = str(warm_start(ModelConfig(tiny=tiny, warm_start=ws), demos, 0, threads=2))
        model, tok = load_model(folder, "float32")
        worst = min(
            min(greedy_gaps(model, tok.encode(f"{w}>"), [*tok.encode(w), tok.eos_token_id]))
            for w in words
        )
        if worst > 1.0:
            return folder
        steps *= 2
    raise RuntimeError(
        f"the copy model does not copy {list(words)} clearly after {steps // 2} steps"
    )


def pytest_unconfigure(config) -> None:
    """torch and vLLM import triton, whose nanobind bindings print a "nanobind: leaked ..." report
    to stderr as the interpreter tears its modules down (harmless; pytest's report is complete by
    then). The filter `omnisched` uses drops it, set at exit: after pytest has given back the
    file descriptors it captured."""
    atexit.register(drop_teardown_noise)
