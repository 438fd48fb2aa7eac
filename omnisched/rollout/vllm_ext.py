"""vLLM worker extension: load new policy weights inside each vLLM worker process.

vLLM mixes this class into its worker (`LLM(worker_extension_cls=...)`); the driver reaches it
with `llm.collective_rpc("load_weights_from_file", args=(path,))`. Only the path of a tensor
file travels through the RPC: tensors themselves must not be sent as plain Python objects.
"""

from __future__ import annotations

import torch


class WeightSyncExtension:
    """Methods added to every vLLM worker (`self` is the worker)."""

    def load_weights_from_file(self, path: str) -> int:
        """Load a `torch.save`d state dict (HF parameter names) into the worker's model.

        Goes through the worker's `reload_weights`, which re-runs the per-layer weight
        processing done after the first load (e.g. the CPU backend's repacking of linear
        weights); a plain `model.load_weights` would write into layers already processed.
        `weights_only=True` keeps the load free of arbitrary unpickling.
        """
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        self.reload_weights(weights_iterator=iter(state.items()))  # type: ignore[attr-defined]
        return len(state)
