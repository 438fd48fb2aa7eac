"""Model merging over state dicts: task vectors, task arithmetic and TIES.

Task arithmetic (Ilharco et al. 2023):  theta = theta_base + lambda * sum_t tau_t,
with tau_t = theta_t - theta_base.  TIES (Yadav et al. 2023): trim each tau_t to its top-k%
magnitudes, elect one sign per parameter by the summed trimmed values (the sign with the larger
total magnitude), then average only the values that agree with it (disjoint mean):
    theta = theta_base + lambda * tau_merged.
Only floating-point tensors are merged; any other tensor is taken from the base unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

StateDict = Mapping[str, Tensor]


def _check_compatible(base: StateDict, others: Sequence[StateDict]) -> None:
    for i, sd in enumerate(others):
        if set(sd) != set(base):
            diff = sorted(set(sd) ^ set(base))[:5]
            raise ValueError(f"state dict {i} and the base differ in keys, e.g. {diff}")
        for k, v in sd.items():
            if v.shape != base[k].shape:
                raise ValueError(
                    f"state dict {i}: '{k}' has shape {tuple(v.shape)}, base has "
                    f"{tuple(base[k].shape)}"
                )


def _mergeable(t: Tensor) -> bool:
    return t.is_floating_point()


def task_vector(finetuned: StateDict, base: StateDict) -> dict[str, Tensor]:
    """tau = theta_finetuned - theta_base, in float32, over the floating-point tensors."""
    _check_compatible(base, [finetuned])
    return {k: finetuned[k].float() - base[k].float() for k in base if _mergeable(base[k])}


def apply_task_vector(
    base: StateDict, tau: Mapping[str, Tensor], scale: float
) -> dict[str, Tensor]:
    """theta = theta_base + scale * tau, each tensor back in the base's dtype."""
    out = {}
    for k, v in base.items():
        if k in tau:
            out[k] = (v.float() + scale * tau[k]).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def task_arithmetic(
    base: StateDict, finetuned: Sequence[StateDict], scale: float = 1.0
) -> dict[str, Tensor]:
    """theta_base + scale * sum_t (theta_t - theta_base)."""
    if not finetuned:
        raise ValueError("task arithmetic needs at least one fine-tuned state dict")
    taus = [task_vector(sd, base) for sd in finetuned]
    summed = {k: torch.stack([t[k] for t in taus]).sum(0) for k in taus[0]}
    return apply_task_vector(base, summed, scale)


def trim_top_k(tau: Mapping[str, Tensor], density: float) -> dict[str, Tensor]:
    """Keep the ceil(density * n) largest-magnitude entries of the whole task vector (all tensors
    together, as in the TIES paper); zero the rest. Ties at the cut go to the earlier index."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"TIES density must be in (0, 1], got {density}")
    keys = list(tau)
    flat = torch.cat([tau[k].reshape(-1) for k in keys]) if keys else torch.zeros(0)
    keep = math.ceil(density * flat.numel())
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if keep:
        # stable sort by descending magnitude: equal magnitudes keep index order
        order = torch.sort(flat.abs(), descending=True, stable=True).indices
        mask[order[:keep]] = True
    trimmed = torch.where(mask, flat, torch.zeros_like(flat))
    out, start = {}, 0
    for k in keys:
        n = tau[k].numel()
        out[k] = trimmed[start : start + n].reshape(tau[k].shape)
        start += n
    return out


def elect_sign(taus: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """gamma = sign(sum_t tau_t): per parameter, the sign whose values have more total mass."""
    return {k: torch.sign(torch.stack([t[k] for t in taus]).sum(0)) for k in taus[0]}


def disjoint_mean(
    taus: Sequence[Mapping[str, Tensor]], signs: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Per parameter, the mean of the non-zero tau_t whose sign equals the elected sign
    (0 where none agrees)."""
    out = {}
    for k, gamma in signs.items():
        stacked = torch.stack([t[k] for t in taus])
        agree = (torch.sign(stacked) == gamma) & (stacked != 0)
        total = torch.where(agree, stacked, torch.zeros_like(stacked)).sum(0)
        count = agree.sum(0)
        out[k] = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
    return out


def ties_merge(
    base: StateDict, finetuned: Sequence[StateDict], density: float = 0.2, scale: float = 1.0
) -> dict[str, Tensor]:
    """TIES-merging: trim (top `density` of each task vector), elect sign, disjoint mean."""
    if not finetuned:
        raise ValueError("TIES needs at least one fine-tuned state dict")
    taus = [trim_top_k(task_vector(sd, base), density) for sd in finetuned]
    merged = disjoint_mean(taus, elect_sign(taus))
    return apply_task_vector(base, merged, scale)
