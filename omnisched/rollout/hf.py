"""HF transformers rollout engine: batched sampling with a KV cache, logprobs and entropies.

A hand-written decode loop rather than `model.generate`: each prompt is prefilled once and its
cache repeated n times; the sampled token's logprob and the step's entropy come from the softmax
the sampler needs. Two loops (`hf_decode`): `drop` (finished rows leave the batch, the cache is
compacted; the CPU default) and `mask` (finished rows are masked in a static cache, optionally
`torch.compile`d; the CUDA default). Both keep the outputs on the device until the call ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from inspect import signature
from pathlib import Path

import torch
from transformers import DynamicCache, StaticCache

from omnisched.config.rollout_options import COMPILE_NEEDS_MASK
from omnisched.errors import OmniError
from omnisched.model.build import cpu_attention, load_model, stop_token_ids
from omnisched.rollout import weight_sync
from omnisched.rollout.base import Completion, SamplingParams
from omnisched.rollout.hf_decode import (
    Decoded,
    DecodeInputs,
    check_maskable,
    decode_drop,
    decode_mask,
)

DECODES = ("auto", "drop", "mask")
PROMPT_BUCKET = 32  # masked decoding pads prompts to a multiple: few static-cache shapes


class HFEngine:
    """`RolloutEngine` on a local HF causal LM. `device=None` picks CUDA when available.

    `max_batch` caps the rows (prompts x n) decoded together; on CPU attention is "eager",
    measured 1.3-1.5x faster than SDPA for small-model decoding (pass `attn_implementation`
    to override). `decode`: "drop", "mask" or "auto" (mask on CUDA or when compiling, else
    drop); `compile` compiles the masked decode step with inductor (CUDA graphs on CUDA), or
    with the torch.compile backend it names ("eager", "aot_eager"); `check_every`: the
    steps between the masked loop's "all finished?" checks (its only host syncs).
    """

    def __init__(
        self,
        model_path: str | Path,
        dtype: str = "bfloat16",
        threads: int | None = None,
        max_batch: int = 512,
        device: str | None = None,
        attn_implementation: str | None = None,
        decode: str = "auto",
        compile: bool | str = False,
        check_every: int = 16,
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
        self.decode = resolve_decode(decode, self.device, compile)
        if self.decode == "mask":
            check_maskable(self.model.config)
        self.check_every = check_every
        self._takes_cache_position = "cache_position" in signature(self.model.forward).parameters
        self._step = None
        if compile:  # CUDA graphs need static shapes and addresses: the static cache has both
            cuda_graphs = self.device.type == "cuda" and compile is True
            backend = "inductor" if compile is True else compile  # a name: that torch backend
            mode = "reduce-overhead" if cuda_graphs else None
            self._step = torch.compile(self._forward, backend=backend, mode=mode, dynamic=False)
        self._cache: tuple[tuple[int, int], StaticCache] | None = None

    def update_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Copy learner weights in (cast to the engine's dtype and device); all must be given."""
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        missing = [k for k in missing if k not in tied_aliases(self.model, state_dict)]
        if missing or unexpected:
            raise KeyError(
                f"weights do not match the model: missing {missing}, unexpected {unexpected}"
            )

    @torch.no_grad()
    def copy_weights(self, live: Mapping[str, torch.Tensor]) -> int:
        """Copy a learner's live tensors (same process) into this engine's, in place: device to
        device, cast to the engine's dtype, no CPU snapshot; all must be given. Returns how many
        tensors were written (tied ones once)."""
        own = self.model.state_dict(keep_vars=True)
        missing = [k for k in own if k not in live and k not in tied_aliases(self.model, live)]
        unexpected = [k for k in live if k not in own]
        if missing or unexpected:
            raise KeyError(
                f"weights do not match the model: missing {missing}, unexpected {unexpected}"
            )
        seen: set[int] = set()
        for name, src in live.items():
            dst = own[name]
            if dst.data_ptr() not in seen:  # a tied tensor is written once
                seen.add(dst.data_ptr())
                dst.data.copy_(src.detach(), non_blocking=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return len(seen)

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
        self._cache = None
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

        With `params.seed` set, the same prompts, params and `max_batch` give the same samples,
        whichever decode loop runs (`decode`: drop and mask sample alike).
        """
        per_chunk = max(1, self.max_batch // params.n)
        out: list[list[Completion]] = []
        for chunk, i in enumerate(range(0, len(prompts), per_chunk)):
            out += self._generate(list(prompts[i : i + per_chunk]), params, chunk)
        return out

    def _generate(self, prompts: list[str], params: SamplingParams, chunk: int):
        enc = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        ids, mask = self._left_pad(enc, PROMPT_BUCKET if self.decode == "mask" else 1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        rows, n = len(prompts) * params.n, params.n
        uniforms = self._uniforms(params, chunk, rows)
        last_pos = pos[:, -1].repeat_interleave(n)
        stops = (self.eos, self.pad)
        if self.decode == "mask":  # every row prefilled into a static cache that spans the decode
            ids, mask, pos = (x.repeat_interleave(n, 0) for x in (ids, mask, pos))
            mask = torch.cat([mask, mask.new_ones(rows, params.max_new_tokens)], dim=1)
            cache = self._static_cache(rows, mask.shape[1])
            slots = torch.arange(mask.shape[1], device=self.device)
            logits = self._forward(ids, mask, pos, cache, slots[: ids.shape[1]])
            step = self._step or self._forward
            d = DecodeInputs(step, logits, cache, mask, last_pos, params, uniforms, *stops)
            decoded = decode_mask(d, slots=slots, check_every=self.check_every)
        else:
            cache = DynamicCache(config=self.model.config)
            logits = self._forward(ids, mask, pos, cache)  # prefill each prompt once, then repeat
            if n > 1:
                cache.batch_repeat_interleave(n)
                logits, mask = logits.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
            d = DecodeInputs(self._forward, logits, cache, mask, last_pos, params, uniforms, *stops)
            decoded = decode_drop(d)
        return self._completions(prompts, enc, n, decoded)

    def _uniforms(self, params: SamplingParams, chunk: int, rows: int) -> torch.Tensor:
        """One uniform per (step, row) for the sampler, drawn before decoding; seeded per chunk so
        that how long one chunk decodes does not move the next chunk's draws."""
        gen = None
        if params.seed is not None and params.temperature > 0:
            seed = (params.seed * 1_000_003 + chunk) % 2**63
            gen = torch.Generator(device=self.device).manual_seed(seed)
        shape = (params.max_new_tokens, rows)
        return torch.rand(shape, generator=gen, device=self.device)

    def _forward(self, ids, mask, pos, cache, cache_position=None) -> torch.Tensor:
        """Last-position logits. `cache_position` (the static cache's slots) is passed to
        transformers versions whose forward still takes it (it then need not ask the cache,
        a host sync per step); later versions read it from the cache itself."""
        extra = {}
        if cache_position is not None and self._takes_cache_position:
            extra["cache_position"] = cache_position
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
            **extra,
        )
        return out.logits[:, -1]

    def _static_cache(self, rows: int, length: int) -> StaticCache:
        """A static cache of `rows` x `length`, reused (reset) while the shape repeats: the
        compiled step then keeps its graph, whose addresses are the cache's."""
        if self._cache is None or self._cache[0] != (rows, length):
            self._cache = None  # free the old one first
            self._cache = ((rows, length), StaticCache(self.model.config, max_cache_len=length))
        else:
            self._cache[1].reset()
        return self._cache[1]

    def _left_pad(self, enc: list[list[int]], multiple: int = 1) -> tuple[torch.Tensor, ...]:
        width = max(1, max(len(e) for e in enc))
        width = -(-width // multiple) * multiple
        ids = torch.full((len(enc), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(enc), width), dtype=torch.long)
        for i, e in enumerate(enc):
            if e:
                ids[i, width - len(e) :] = torch.tensor(e)
                mask[i, width - len(e) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _completions(
        self, prompts: list[str], enc: list[list[int]], n: int, d: Decoded
    ) -> list[list[Completion]]:
        out = []
        for i, prompt in enumerate(prompts):
            group = []
            for r in range(i * n, (i + 1) * n):
                toks, done = d.tokens[r], d.finished[r]
                text = self.tokenizer.decode(toks[:-1] if done else toks, skip_special_tokens=True)
                group.append(
                    Completion(prompt, text, enc[i], toks, d.logprobs[r], d.entropies[r], done)
                )
            out.append(group)
        return out


def tied_aliases(model: torch.nn.Module, given: Mapping[str, torch.Tensor]) -> set[str]:
    """Names of the model's tensors that share storage with a tensor named in `given`."""
    by_ptr: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        by_ptr.setdefault(tensor.data_ptr(), []).append(name)
    return {n for names in by_ptr.values() if any(k in given for k in names) for n in names}


def resolve_decode(decode: str, device: torch.device, compile: bool) -> str:
    """The decode loop `decode` names on `device`: "auto" masks on CUDA and when compiling."""
    if decode not in DECODES:
        raise OmniError(f"rollout.hf.decode: unknown '{decode}'; known: {', '.join(DECODES)}")
    if compile and decode == "drop":
        raise OmniError(COMPILE_NEEDS_MASK)  # a recipe is refused at load with these words
    if decode == "auto":
        return "mask" if device.type == "cuda" or compile else "drop"
    return decode
