"""Token logprobs and entropies from the policy's last hidden states, a chunk of tokens at a
time (`learner.logits_chunk_tokens`): only one chunk's [chunk, V] logits exist at once, in the
forward pass and again in the backward pass, which recomputes them from the chunk's hidden
states (activation checkpointing) instead of keeping every chunk's. The values and gradients
are those of the whole micro-batch's logits (`grpo.token_logprobs_and_entropy`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from omnisched.learner.grpo import token_logprobs_and_entropy
from omnisched.learner.micro_batch import MicroBatch


def _chunk_logprobs(
    hidden: Tensor, labels: Tensor, head: nn.Module, temperature: float
) -> tuple[Tensor, Tensor]:
    return token_logprobs_and_entropy(head(hidden), labels, temperature)


def chunked_logprobs_and_entropy(
    hidden: Tensor, head: nn.Module, labels: Tensor, temperature: float, chunk: int
) -> tuple[Tensor, Tensor]:
    """(log p(label), detached entropy) [N] of softmax(head(hidden) / T) for hidden [N, H],
    `chunk` rows at a time; with autograd on, each chunk's logits are recomputed in backward."""
    if chunk < 1:
        raise ValueError(f"learner.logits_chunk_tokens must be >= 1, got {chunk}")
    logps, entropies = [], []
    for i in range(0, hidden.shape[0], chunk):
        h, y = hidden[i : i + chunk], labels[i : i + chunk]
        if torch.is_grad_enabled():
            args = (h, y, head, temperature)
            logp, entropy = checkpoint(_chunk_logprobs, *args, use_reentrant=False)
        else:
            logp, entropy = _chunk_logprobs(h, y, head, temperature)
        logps.append(logp)
        entropies.append(entropy)
    return torch.cat(logps), torch.cat(entropies)


def unwrap(model: nn.Module) -> nn.Module:
    """The HF model (a DeepSpeed engine holds it as `.module`)."""
    return getattr(model, "module", model)


def chunked_policy_logprobs(
    model: nn.Module, mb: MicroBatch, bf16: bool, temperature: float, chunk: int
) -> tuple[Tensor, Tensor]:
    """(logprobs, entropies) [b, W] of the window's labels, as `step.logprobs_of`, through the
    decoder's last hidden states and the LM head in chunks; computed only where `mb.targets`
    (0 elsewhere: padding carries no loss)."""
    hf = unwrap(model)
    targets = mb.targets if mb.targets is not None else mb.mask
    with torch.autocast(mb.input_ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = hf.get_decoder()(
            input_ids=mb.input_ids, attention_mask=mb.attention_mask, use_cache=False
        )
        hidden = out.last_hidden_state.index_select(1, mb.positions)[targets]  # [N, H]
        logp, entropy = chunked_logprobs_and_entropy(
            hidden, hf.get_output_embeddings(), mb.labels[targets], temperature, chunk
        )
    zeros = torch.zeros(mb.labels.shape, dtype=logp.dtype, device=logp.device)
    return zeros.masked_scatter(targets, logp), zeros.masked_scatter(targets, entropy)
