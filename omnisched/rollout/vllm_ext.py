"""vLLM worker extension: load new policy weights inside each vLLM worker process.

vLLM mixes this class into its worker (`LLM(worker_extension_cls=...)`); the driver reaches it
with `llm.collective_rpc(method, args=...)`. Tensors never travel through the RPC as plain
Python objects: either the path of a tensor file does (`load_weights_from_file`), or only their
metadata does and the tensors arrive by broadcast (`join_weight_group`, `receive_weights`).
Both load through the worker's `reload_weights`, which re-runs the per-layer weight processing
done after the first load (e.g. the CPU backend's repacking of linear weights); a plain
`model.load_weights` would write into layers already processed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from omnisched.rollout import weight_sync


class WeightSyncExtension:
    """Methods added to every vLLM worker (`self` is the worker)."""

    def load_weights_from_file(self, path: str) -> int:
        """Load a `torch.save`d state dict (HF parameter names) into the worker's model.
        `weights_only=True` keeps the load free of arbitrary unpickling."""
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        self.reload_weights(weights_iterator=iter(state.items()))  # type: ignore[attr-defined]
        return len(state)

    def join_weight_group(self, host: str, port: int, rank_offset: int, world_size: int) -> int:
        """Join the learner's broadcast group as rank `rank_offset` + this worker's rank in
        vLLM's world (each tensor-parallel worker is a rank); returns the group rank."""
        rank = rank_offset + self.rank  # type: ignore[attr-defined]
        device = self.device  # type: ignore[attr-defined]
        self.weight_group = weight_sync.join(host, port, rank, world_size, device)
        return rank

    def receive_weights(self, meta: Sequence[weight_sync.TensorMeta]) -> int:
        """Receive the tensors rank 0 broadcasts (buffers on this worker's device) and load
        them as they arrive; returns how many arrived."""
        received = weight_sync.receive(self.weight_group, meta)
        self.reload_weights(weights_iterator=received)  # type: ignore[attr-defined]
        left = sum(1 for _ in received)  # the sender waits until every bucket was received
        if left:
            raise RuntimeError(f"vLLM's load_weights left {left} of {len(meta)} tensors unread")
        return len(meta)
