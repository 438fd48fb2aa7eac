"""Weight sync by collective broadcast: the learner (group rank 0) sends, rollout engines receive.

The group is a standalone `ProcessGroupGloo` (CPU) or `ProcessGroupNCCL` (CUDA) built from a
`TCPStore` that rank 0 hosts: it leaves torch.distributed's default group alone, which vLLM's
workers and DeepSpeed's ranks already use for themselves. Every party must join at once.

Per sync only the metadata `[(name, dtype, shape)]` travels by RPC; the tensors go through the
group, packed in the metadata's order into flat byte buckets of up to `BUCKET_BYTES` (one
collective per bucket rather than per tensor; a bigger tensor gets a bucket of its own).
Sending bytes also makes any dtype (bf16, bool) travel over gloo. A state dict that holds one
tensor under two names (tied embeddings) sends it twice; each name arrives as its own tensor.

Aborting. A party that dies mid-broadcast leaves the others waiting until the group's timeout
(gloo and NCCL alike). So every party waits for each bucket by polling, and checks the group's
store for an abort key every `POLL_S`: whoever sees the death (the driver) calls `abort(host,
port)`, and every party still waiting raises `WeightSyncAborted` within a poll. A tensor-parallel
engine's shards are parties of their own: each receives the full tensors (its loader keeps its
shard).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

BUCKET_BYTES = 64 << 20
ALIGN = 16  # bucket offsets stay aligned so that each slice can be viewed as its dtype
TensorMeta = tuple[str, str, tuple[int, ...]]  # name, dtype ("bfloat16"), shape
POLL_S = 0.5  # how often a waiting party looks for an abort in the store
PREFIX = "omnisched-weights"
ABORT_KEY = "abort"


class WeightSyncAborted(RuntimeError):
    """The group was aborted (a party died) while this party waited for a bucket."""


@dataclass(frozen=True)
class WeightGroup:
    """A joined group: its c10d backend (gloo or NCCL), this party's rank, its buffers' device,
    and the store it was built from (where an abort is posted)."""

    pg: Any
    rank: int
    device: torch.device
    store: Any = None


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
    store = dist.PrefixStore(PREFIX, store)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        pg = dist.ProcessGroupNCCL(store, rank, world_size, options)
    else:
        pg = dist.ProcessGroupGloo(store, rank, world_size, timeout)
    return WeightGroup(pg, rank, device, store)


def abort(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """Post an abort in the store of the group hosted at `host:port`: every party waiting in a
    broadcast of that group raises `WeightSyncAborted` within `POLL_S`. False when the store
    is gone (its host, learner rank 0, died: the parties' polls then fail and abort too)."""
    try:
        client = dist.TCPStore(
            host,
            port,
            is_master=False,
            timeout=timedelta(seconds=timeout_s),
            wait_for_workers=False,
        )
        dist.PrefixStore(PREFIX, client).set(ABORT_KEY, "1")
        return True
    except (RuntimeError, OSError):  # torch raises DistStoreError (a RuntimeError) when it is gone
        return False


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
    _wait(group, group.pg.broadcast([buffer], options))


def _wait(group: WeightGroup, work: Any) -> None:
    """Wait for `work`, looking for an abort in the group's store every POLL_S."""
    delay, check_at = 1e-4, time.monotonic() + POLL_S
    while not work.is_completed():
        if group.store is not None and time.monotonic() >= check_at:
            if _aborted(group.store):
                with contextlib.suppress(Exception):  # free NCCL's communicator; gloo may not
                    group.pg.abort()
                raise WeightSyncAborted(f"weight broadcast aborted (group rank {group.rank})")
            check_at = time.monotonic() + POLL_S
        time.sleep(delay)
        delay = min(2 * delay, 0.01)
    work.wait()  # raises the collective's own error, if any


def _aborted(store: Any) -> bool:
    try:
        return store.check([ABORT_KEY])
    except (RuntimeError, OSError):  # the store's host is gone: nobody will send the rest
        return True


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
