"""The HF engine's decode loops and its sampler: tokens, logprobs and entropies stay on the device.

Two loops share one sampler and one output (`Decoded`, [rows, max_new_tokens] tensors written in
place, brought to the host once per call):
- `decode_drop`: rows that emit EOS leave the batch and the `DynamicCache` is compacted
  (`batch_select_indices`). Cheap on CPU, where fewer rows mean less work at once.
- `decode_mask`: every row decodes to the end into a preallocated `StaticCache`; finished rows
  are masked (their later tokens are padding), nothing is re-indexed, and the only host sync is
  an "all finished?" check every `check_every` steps. The decode step can be `torch.compile`d.

Sampling is by inverse CDF with one uniform per (step, original row) drawn up front, so a row's
tokens do not depend on which other rows are still in the batch: with one seed (or greedy) both
loops sample the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from omnisched.errors import OmniError
from omnisched.rollout.base import SamplingParams

Forward = Callable[..., torch.Tensor]  # (ids, mask, pos, cache) -> last-position logits [R, V]


@dataclass
class DecodeInputs:
    """What a decode loop starts from: the prefill's last logits, its cache and attention mask,
    each row's last position, the sampling params with one uniform per (step, row), the stop ids
    and the pad id written after a row ends; `forward` runs one decode step."""

    forward: Forward
    logits: torch.Tensor
    cache: object
    mask: torch.Tensor
    last_pos: torch.Tensor
    params: SamplingParams
    uniforms: torch.Tensor
    eos: torch.Tensor
    pad: int


@dataclass
class Decoded:
    """The decode of R rows on the host: per row its tokens (EOS included), logprobs, entropies."""

    tokens: list[list[int]]
    logprobs: list[list[float]]
    entropies: list[list[float]]
    finished: list[bool]


class Record:
    """[R, T] device tensors that the loops write each step into; `to_host` copies them once."""

    def __init__(self, rows: int, steps: int, pad: int, device: torch.device) -> None:
        self.tokens = torch.full((rows, steps), pad, dtype=torch.long, device=device)
        self.logprobs = torch.zeros((rows, steps), device=device)
        self.entropies = torch.zeros((rows, steps), device=device)
        self.steps = 0  # columns written

    def write(self, t: int, tok, logprob, entropy, rows: torch.Tensor | None = None) -> None:
        where = (slice(None), t) if rows is None else (rows, t)
        self.tokens[where], self.logprobs[where], self.entropies[where] = tok, logprob, entropy
        self.steps = t + 1

    def to_host(self, eos: torch.Tensor) -> Decoded:
        """Cut each row after its first EOS (kept) or at the last step written."""
        tokens = self.tokens[:, : self.steps]
        is_eos = torch.isin(tokens, eos)
        ended = is_eos.any(1)
        lengths = torch.where(ended, is_eos.int().argmax(1) + 1, self.steps)
        written = (tokens, self.logprobs[:, : self.steps], self.entropies[:, : self.steps])
        toks, lps, hs = (x.tolist() for x in written)
        lens, done = lengths.tolist(), ended.tolist()
        return Decoded(
            [t[:n] for t, n in zip(toks, lens, strict=True)],
            [lp[:n] for lp, n in zip(lps, lens, strict=True)],
            [h[:n] for h, n in zip(hs, lens, strict=True)],
            done,
        )


def decode_drop(d: DecodeInputs) -> Decoded:
    """Decode, dropping finished rows from the batch and the cache (a host sync per step)."""
    forward, logits, cache, mask, last_pos = d.forward, d.logits, d.cache, d.mask, d.last_pos
    params, uniforms, eos, pad = d.params, d.uniforms, d.eos, d.pad
    rows_total = logits.shape[0]
    record = Record(rows_total, params.max_new_tokens, pad, logits.device)
    rows = torch.arange(rows_total, device=logits.device)  # original row of each batch row
    for t in range(params.max_new_tokens):
        tok, logprob, entropy = sample_step(logits, params, uniforms[t, rows])
        record.write(t, tok, logprob, entropy, rows)
        live = ~torch.isin(tok, eos)
        if t == params.max_new_tokens - 1 or not bool(live.any()):
            break
        if not bool(live.all()):  # drop finished rows so they cost nothing more
            keep = live.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            tok, mask, last_pos, rows = tok[keep], mask[keep], last_pos[keep], rows[keep]
        mask = torch.cat([mask, mask.new_ones(len(tok), 1)], dim=1)
        last_pos = last_pos + 1
        logits = forward(tok[:, None], mask, last_pos[:, None], cache)
    return record.to_host(eos)


def decode_mask(
    d: DecodeInputs, slots: torch.Tensor | None = None, check_every: int = 16
) -> Decoded:
    """Decode every row to the end (finished rows masked); `mask` spans the whole static cache
    (prompt + max_new_tokens columns: causality hides the columns not yet written); `slots`:
    the cache positions 0..width-1 on the device, handed to `d.forward` one at a time."""
    step, logits, cache, mask, last_pos = d.forward, d.logits, d.cache, d.mask, d.last_pos
    params, uniforms, eos, pad = d.params, d.uniforms, d.eos, d.pad
    rows_total = logits.shape[0]
    record = Record(rows_total, params.max_new_tokens, pad, logits.device)
    done = torch.zeros(rows_total, dtype=torch.bool, device=logits.device)
    pad_tok = torch.full_like(done, pad, dtype=torch.long)
    width = mask.shape[1] - params.max_new_tokens  # the prompt's columns
    for t in range(params.max_new_tokens):
        tok, logprob, entropy = sample_step(logits, params, uniforms[t])
        tok = torch.where(done, pad_tok, tok)
        record.write(t, tok, logprob, entropy)
        done |= torch.isin(tok, eos)
        if t == params.max_new_tokens - 1:
            break
        if (t + 1) % check_every == 0 and bool(done.all()):
            break
        slot = None if slots is None else slots[width + t : width + t + 1]
        logits = step(tok[:, None], mask, (last_pos + t + 1)[:, None], cache, slot)
    return record.to_host(eos)


def check_maskable(config) -> None:
    """Masked decoding writes a full-width static cache; sliding-window layers are not handled."""
    if "sliding_attention" in (getattr(config, "layer_types", None) or []):
        raise OmniError(
            f"rollout.hf.decode: mask does not support the sliding-window attention of this "
            f"{config.model_type} model; use rollout.hf.decode: drop"
        )


def sample_step(
    logits: torch.Tensor, params: SamplingParams, uniform: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next token, its logprob under the sampling distribution, and the step's entropy.

    From one fp32 copy z of the logits (divided by T) and the probabilities p the sampler needs:
    log p(tok) = z[tok] - logsumexp(z) (the learner's formula), H = logsumexp(z) - sum p z (a
    batched dot: no [R, V] product), and p's cumulative sum (in place) for inverse-CDF sampling
    at `uniform` ([R] in [0, 1)). Greedy (T = 0) reports the entropy at T = 1; top-p reports the
    entropy before truncation and the logprob after it.
    """
    z = logits.float()
    if params.temperature not in (0, 1):
        z = z.div_(params.temperature) if z is not logits else z / params.temperature
    lse = torch.logsumexp(z, dim=-1)
    probs = (z - lse[:, None]).exp_()
    entropy = lse - torch.bmm(probs[:, None, :], z[:, :, None]).view(-1)  # H = lse - sum p z
    if params.temperature == 0:
        tok = z.argmax(-1)
        return tok, z.gather(-1, tok[:, None]).squeeze(1) - lse, entropy
    log_mass = None
    if params.top_p < 1.0:
        probs, log_mass = _top_p(probs, params.top_p)
    cdf = probs.cumsum_(-1)
    target = uniform[:, None].to(cdf.dtype) * cdf[:, -1:]
    tok = torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_(max=z.shape[-1] - 1)
    logprob = z.gather(-1, tok[:, None]).squeeze(1) - lse
    return tok, logprob if log_mass is None else logprob - log_mass, entropy


def _top_p(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero all but the smallest set of tokens whose probability reaches top_p; the kept
    probabilities (unnormalised: the sampler scales by their total) and log of their mass."""
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    drop_sorted = sorted_p.cumsum(-1) - sorted_p >= top_p  # mass before it already reaches top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
    kept = probs.masked_fill_(drop, 0.0)
    return kept, kept.sum(-1).log()
