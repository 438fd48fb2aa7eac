"""HF transformers rollout engine: batched sampling with a KV cache, logprobs and entropies.

A hand-written decode loop rather than `model.generate`: each prompt is prefilled once and its
cache repeated n times, rows that emit EOS leave the batch (the cache is compacted), and the
sampled token's logprob and the step's entropy come from the one softmax the sampler needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from transformers import DynamicCache

from omnisched.model.build import cpu_attention, load_model, stop_token_ids
from omnisched.rollout import weight_sync
from omnisched.rollout.base import Completion, SamplingParams


class HFEngine:
    """`RolloutEngine` on a local HF causal LM. `device=None` picks CUDA when available.

    `max_batch` caps the rows (prompts x n) decoded together; on CPU attention is "eager",
    measured 1.3-1.5x faster than SDPA for small-model decoding (pass `attn_implementation`
    to override).
    """

    def __init__(
        self,
        model_path: str | Path,
        dtype: str = "bfloat16",
        threads: int | None = None,
        max_batch: int = 512,
        device: str | None = None,
        attn_implementation: str | None = None,
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        attn = attn_implementation or cpu_attention(self.device.type)
        self.model, self.tokenizer = load_model(model_path, dtype, attn)
        self.model.to(self.device).eval()
        self.eos = torch.tensor(stop_token_ids(self.model, self.tokenizer), device=self.device)
        self.pad = self.tokenizer.pad_token_id
        self.max_batch = max_batch

    def update_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Copy learner weights in (cast to the engine's dtype and device); all must be given."""
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        missing = [k for k in missing if k not in tied_aliases(self.model, state_dict)]
        if missing or unexpected:
            raise KeyError(
                f"weights do not match the model: missing {missing}, unexpected {unexpected}"
            )

    def join_weight_group(self, host: str, port: int, world_size: int, rank_offset: int = 1) -> int:
        """Join the learner's broadcast group (`weight_sync`) as rank `rank_offset`; blocks until
        every party has joined, so the learner (rank 0) must join concurrently."""
        self.weight_group = weight_sync.join(host, port, rank_offset, world_size, self.device)
        return rank_offset

    def receive_weights(self, meta: Sequence[weight_sync.TensorMeta]) -> int:
        """Receive the weights rank 0 broadcasts (`weight_sync.send`, running concurrently) and
        load them as `update_weights` does, once all have arrived; returns how many arrived."""
        self.update_weights(dict(weight_sync.receive(self.weight_group, meta)))
        return len(meta)

    def sleep(self, level: int) -> str | None:
        """Free the GPU for a colocated learner step: weights offloaded to CPU, cached blocks
        freed (levels 1 and 2 alike: there is no KV cache between calls to drop); None: done."""
        if self.device.type == "cuda":
            self.model.to("cpu")
            torch.cuda.empty_cache()
        return None

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Weights back on the engine's device (`tags` as vLLM's; an HF engine holds only those)."""
        self.model.to(self.device)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        """`params.n` completions per prompt, in prompt order (see `sample_step` for logprobs).

        With `params.seed` set, the same prompts, params and `max_batch` give the same samples.
        """
        per_chunk = max(1, self.max_batch // params.n)
        gen = None
        if params.seed is not None and params.temperature > 0:
            gen = torch.Generator(device=self.device).manual_seed(params.seed)
        out: list[list[Completion]] = []
        for i in range(0, len(prompts), per_chunk):
            out += self._generate(list(prompts[i : i + per_chunk]), params, gen)
        return out

    def _generate(
        self, prompts: list[str], params: SamplingParams, gen: torch.Generator | None
    ) -> list[list[Completion]]:
        enc = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        ids, mask = self._left_pad(enc)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(ids, mask, pos, cache)  # prefill each prompt once, then repeat
        if params.n > 1:
            cache.batch_repeat_interleave(params.n)
            logits, mask = (
                logits.repeat_interleave(params.n, 0),
                mask.repeat_interleave(params.n, 0),
            )
        last_pos = pos[:, -1].repeat_interleave(params.n)
        trace = Trace(len(prompts) * params.n, self.device)
        for step in range(params.max_new_tokens):
            tok, logprob, entropy = sample_step(logits, params, gen)
            live = trace.record(tok, logprob, entropy, torch.isin(tok, self.eos))
            if step == params.max_new_tokens - 1 or not bool(live.any()):
                break
            if not bool(live.all()):  # drop finished rows so they cost nothing more
                keep = live.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                tok, mask, last_pos = tok[keep], mask[keep], last_pos[keep]
            mask = torch.cat([mask, mask.new_ones(len(tok), 1)], dim=1)
            last_pos = last_pos + 1
            logits = self._forward(tok[:, None], mask, last_pos[:, None], cache)
        return self._completions(prompts, enc, params.n, trace)

    def _forward(self, ids, mask, pos, cache) -> torch.Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1].float()

    def _left_pad(self, enc: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(1, max(len(e) for e in enc))
        ids = torch.full((len(enc), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(enc), width), dtype=torch.long)
        for i, e in enumerate(enc):
            if e:
                ids[i, width - len(e) :] = torch.tensor(e)
                mask[i, width - len(e) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _completions(
        self, prompts: list[str], enc: list[list[int]], n: int, trace: Trace
    ) -> list[list[Completion]]:
        out = []
        for i, prompt in enumerate(prompts):
            group = []
            for r in range(i * n, (i + 1) * n):
                toks, done = trace.tokens[r], trace.finished[r]
                text = self.tokenizer.decode(toks[:-1] if done else toks, skip_special_tokens=True)
                group.append(
                    Completion(
                        prompt, text, enc[i], toks, trace.logprobs[r], trace.entropies[r], done
                    )
                )
            out.append(group)
        return out


class Trace:
    """Per-row record of a decode: tokens, logprobs, entropies, and which rows are still live."""

    def __init__(self, rows: int, device: torch.device) -> None:
        self.rows = torch.arange(rows, device=device)  # original row of each live batch row
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.logprobs: list[list[float]] = [[] for _ in range(rows)]
        self.entropies: list[list[float]] = [[] for _ in range(rows)]
        self.finished = [False] * rows

    def record(
        self, tok: torch.Tensor, logprob: torch.Tensor, entropy: torch.Tensor, ended: torch.Tensor
    ) -> torch.Tensor:
        """Append one step for the live rows; returns the mask of rows that go on."""
        columns = (self.rows, tok, logprob, entropy, ended)
        for r, t, lp, h, end in zip(*(c.tolist() for c in columns), strict=True):
            self.tokens[r].append(t)
            self.logprobs[r].append(lp)
            self.entropies[r].append(h)
            self.finished[r] = end
        live = ~ended
        self.rows = self.rows[live]
        return live


def sample_step(
    logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next token, its logprob under the sampling distribution, and the step's entropy.

    Greedy (temperature 0) reports the entropy of the temperature-1 distribution; sampling
    reports that of the temperature-scaled distribution before top-p truncation.
    """
    z = logits if params.temperature == 0 else logits / params.temperature
    logp = torch.log_softmax(z, dim=-1)  # the step's one full-vocabulary softmax
    probs = logp.exp()
    entropy = -(probs * logp).sum(-1)  # H = -sum p log p
    if params.temperature == 0:
        tok = logp.argmax(-1)
        return tok, logp.gather(-1, tok[:, None]).squeeze(1), entropy
    if params.top_p < 1.0:
        logp, probs = _top_p(logp, probs, params.top_p)
    tok = torch.multinomial(probs, 1, generator=gen).squeeze(1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(1), entropy


def _top_p(
    logp: torch.Tensor, probs: torch.Tensor, top_p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the smallest set of tokens whose probability reaches top_p; renormalise."""
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    drop_sorted = sorted_p.cumsum(-1) - sorted_p >= top_p  # mass before it already reaches top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
    kept = probs.masked_fill(drop, 0.0)
    mass = kept.sum(-1, keepdim=True)
    return logp.masked_fill(drop, float("-inf")) - mass.log(), kept / mass


def tied_aliases(model: torch.nn.Module, given: Mapping[str, torch.Tensor]) -> set[str]:
    """Names of the model's tensors that share storage with a tensor named in `given`."""
    by_ptr: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        by_ptr.setdefault(tensor.data_ptr(), []).append(name)
    return {n for names in by_ptr.values() if any(k in given for k in names) for n in names}
