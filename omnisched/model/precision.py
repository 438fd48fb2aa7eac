"""Which precision runs fast here: "auto" means bf16 only where the hardware computes it natively.

On a CPU without bf16 instructions (AVX512-BF16 or AMX), torch emulates bf16 matrix products:
measured on a 2-core AMD EPYC (AVX2 only), a bf16-autocast 1024x256 @ 256x1024 product took 6x
as long as in float32. On such a machine "auto" is float32; on a GPU or a CPU with native bf16,
bfloat16. The CPU check reads /proc/cpuinfo (no torch), the GPU check imports torch.
"""

from __future__ import annotations

import functools
from pathlib import Path

BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


@functools.cache
def cpu_has_native_bf16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(BF16_FLAGS & set(line.split(":", 1)[1].split()))
    return False


def native_bf16() -> bool:
    """bf16 runs natively where this process computes: its CUDA GPU, else its CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def resolve_dtype(dtype: str) -> str:
    """`model.dtype` as an engine takes it: "auto" -> "bfloat16" where native, else "float32"."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if native_bf16() else "float32"


def resolve_bf16(flag: bool | str) -> bool:
    """`learner.bf16`: "auto" -> bf16 autocast where native."""
    return native_bf16() if flag == "auto" else bool(flag)
