"""Weight sync by collective broadcast: the learner (group rank 0) sends, rollout engines receive.

The group is a standalone `ProcessGroupGloo` (CPU) or `ProcessGroupNCCL` (CUDA) built from a
`TCPStore` that rank 0 hosts: it leaves torch.distributed's default group alone, which vLLM's
workers and DeepSpeed's ranks already use for themselves. Every party must join at once.

Per sync only the metadata `[(name, dtype, shape)]` travels by RPC; the tensors go through the
group, packed in the metadata's order into flat byte buckets of up to `BUCKET_BYTES` (one
collective per bucket rather than per tensor; a bigger tensor gets a bucket of its own).
Sending bytes also makes any dtype (bf16, bool) travel over gloo. A state dict that holds one
tensor under two names (tied embeddings) sends it twice; each name arrives as its own tensor.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

BUCKET_BYTES = 64 << 20
ALIGN = 16  # bucket offsets stay aligned so that each slice can be viewed as its dtype
TensorMeta = tuple[str, str, tuple[int, ...]]  # name, dtype ("bfloat16"), shape


@dataclass(frozen=True)
class WeightGroup:
    """A joined group: its c10d backend (gloo or NCCL), this party's rank, its buffers' device."""

    pg: Any
    rank: int
    device: torch.device


def join(
    host: str,
    port: int,
    rank: int,
    world_size: int,
    device: str | torch.device = "cpu",
    timeout_s: float = 600.0,
) -> WeightGroup:
    """Join the group whose store rank 0 hosts at `host:port`; returns once all have joined.

    Gloo on CPU, NCCL on CUDA. Gloo picks its network interface from the host name; set
    GLOO_SOCKET_IFNAME where that resolves to a loopback address on a multi-node cluster."""
    device = torch.device(device)
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout)
    store = dist.PrefixStore("omnisched-weights", store)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        pg = dist.ProcessGroupNCCL(store, rank, world_size, options)
    else:
        pg = dist.ProcessGroupGloo(store, rank, world_size, timeout)
    return WeightGroup(pg, rank, device)


def weights_meta(state_dict: Mapping[str, torch.Tensor]) -> list[TensorMeta]:
    """What a receiver needs to allocate the tensors `send` broadcasts, in sending order."""
    return [
        (name, str(t.dtype).removeprefix("torch."), tuple(t.shape))
        for name, t in state_dict.items()
    ]


def buckets(meta: Sequence[TensorMeta], bucket_bytes: int = BUCKET_BYTES) -> list[list[int]]:
    """Indices of consecutive tensors packed together, each bucket up to `bucket_bytes` with
    offsets rounded up to `ALIGN` (a tensor bigger than that is a bucket alone)."""
    out: list[list[int]] = []
    size = 0
    for i, entry in enumerate(meta):
        nbytes = _aligned(_nbytes(entry))
        if not out or size + nbytes > bucket_bytes:
            out.append([])
            size = 0
        out[-1].append(i)
        size += nbytes
    return out


def send(
    group: WeightGroup, state_dict: Mapping[str, torch.Tensor], bucket_bytes: int = BUCKET_BYTES
) -> list[TensorMeta]:
    """Broadcast every tensor from rank 0 (the caller); returns the metadata it followed."""
    if group.rank != 0:
        raise ValueError(f"only group rank 0 sends weights; this is rank {group.rank}")
    meta = weights_meta(state_dict)
    tensors = list(state_dict.values())
    for bucket in buckets(meta, bucket_bytes):
        buffer = _buffer(meta, bucket, group.device)
        for i, part in zip(bucket, _slices(meta, bucket, buffer), strict=True):
            part.copy_(tensors[i].detach().reshape(-1).view(torch.uint8))
        _broadcast(group, buffer)
    if group.device.type == "cuda":  # NCCL's wait only orders streams: return once sent
        torch.cuda.synchronize(group.device)
    return meta


def receive(
    group: WeightGroup,
    meta: Sequence[TensorMeta],
    device: str | torch.device | None = None,
    bucket_bytes: int = BUCKET_BYTES,
) -> Iterator[tuple[str, torch.Tensor]]:
    """`(name, tensor)` as each bucket arrives, on `device` (the group's by default): a
    `load_weights`-style iterator. Consume it whole: the sender waits for every bucket."""
    device = group.device if device is None else torch.device(device)
    for bucket in buckets(meta, bucket_bytes):
        buffer = _buffer(meta, bucket, group.device)
        _broadcast(group, buffer)
        for i, part in zip(bucket, _slices(meta, bucket, buffer), strict=True):
            name, dtype, shape = meta[i]
            yield name, part.view(getattr(torch, dtype)).view(shape).to(device)


def _broadcast(group: WeightGroup, buffer: torch.Tensor) -> None:
    options = dist.BroadcastOptions()
    options.rootRank = 0
    group.pg.broadcast([buffer], options).wait()


def _nbytes(entry: TensorMeta) -> int:
    _, dtype, shape = entry
    return getattr(torch, dtype).itemsize * int(torch.Size(shape).numel())


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def _buffer(meta: Sequence[TensorMeta], bucket: list[int], device: torch.device) -> torch.Tensor:
    size = sum(_aligned(_nbytes(meta[i])) for i in bucket)
    return torch.empty(size, dtype=torch.uint8, device=device)


def _slices(
    meta: Sequence[TensorMeta], bucket: list[int], buffer: torch.Tensor
) -> Iterator[torch.Tensor]:
    """Each tensor's bytes inside the bucket's buffer (views, in bucket order)."""
    offset = 0
    for i in bucket:
        nbytes = _nbytes(meta[i])
        yield buffer[offset : offset + nbytes]
        offset += _aligned(nbytes)
