"""vLLM rollout engine: the offline `vllm.LLM` behind the `RolloutEngine` protocol.

Logprobs. The engine starts vLLM with `logprobs_mode="processed_logprobs"`, so the logprob vLLM
reports for a sampled token is taken after temperature scaling and top-p renormalisation: the
HF engine's definition (`Completion.logprobs`). Greedy requests skip temperature in vLLM and
report the temperature-1 logprob, again as the HF engine does.

Entropies. vLLM returns no entropy. Each step asks for the top `entropy_topk` logprobs and
reports H_k = -sum over those tokens of p log p: a lower bound of the entropy of the sampling
distribution, exact once `entropy_topk` covers the support (e.g. the 260-token char vocabulary,
or a peaked policy). Under top-p < 1 the distribution is the truncated one (the HF engine
reports the pre-truncation entropy). `entropy_topk=0` leaves `entropies` empty.

Per-token cost. Logprobs come back flat (`flat_logprobs`: a few lists per request instead of a
dict of `Logprob` objects per token) and vLLM does not detokenize (`detokenize=False`: it would
otherwise decode every top-k token of every step); the engine decodes each completion's text
once. On the tiny model this took the engine from 0.28x to 0.74-0.89x of raw `LLM.generate`
over four runs on a 2-core VM (bench/bench_rollout_overhead.py --backend vllm). Split, in one
process (256 completions x 40 tokens): the raw call 1435 ms, of which detokenising 290 ms; no
detokenising but the sampled logprob +141 ms, top-20 +158 ms more; this engine 1557 ms.

Weight sync (`update_weights`, one node). The state dict is `torch.save`d to a file in
/dev/shm (RAM) and each worker loads it through `WeightSyncExtension` via `collective_rpc`
(vLLM's in-place `reload_weights`); only the path crosses the RPC. The prefix cache is then
reset: cached KV blocks were computed by the old weights.

Weight sync by broadcast (`join_weight_group`, `receive_weights`; `rollout.weight_sync:
broadcast` in a recipe). The learner's rank 0 and every vLLM worker join one group of their own
(`omnisched.rollout.weight_sync`: a TCPStore plus a gloo group on CPU, NCCL on CUDA, apart from
torch.distributed's default group). Per sync only the metadata (names, dtypes, shapes) crosses
`collective_rpc`; the learner broadcasts the tensors packed in byte buckets and each worker
receives them into buffers on its device and loads them through `reload_weights` as above.
`collective_rpc` returns once the broadcast is done, so the sender runs concurrently (another
process or thread). Tested on CPU over gloo; the NCCL path on GPUs is untested, and the learner
still sends from its CPU snapshot of the weights (`Learner.state_dict`).

Tensor parallel (`tensor_parallel_size`, `distributed_executor_backend`: "mp" runs the shards as
processes on the GPUs Ray gave this actor; "ray" starts vLLM's Ray workers in the placement-group
bundles VLLM_RAY_BUNDLE_INDICES names, and falls back to "mp" on CPU). Every shard loads the full
tensors of a sync and vLLM's weight loaders keep their part (tested with TP 2 on the CPU build).

Sleep (`sleep_level` > 0 starts vLLM with `enable_sleep_mode`): `sleep(1)` frees the KV cache and
offloads the weights to CPU, `sleep(2)` frees both; `wake_up` reallocates them. vLLM 0.32 has
sleep mode on CUDA, ROCm and XPU only: elsewhere `sleep` returns the reason and the engine stays
awake.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import vllm
from safetensors import safe_open
from vllm.platforms import current_platform

from omnisched.rollout import weight_sync
from omnisched.rollout.base import Completion, SamplingParams

EXTENSION = "omnisched.rollout.vllm_ext.WeightSyncExtension"
CPU_KV_CACHE_BYTES = 1 << 30  # vLLM's CPU default is a fraction of all RAM: too much here


class VLLMEngine:
    """`RolloutEngine` on vLLM. `options` go to `vllm.LLM` (e.g. `tensor_parallel_size`,
    `gpu_memory_utilization`, `enforce_eager`, `kv_cache_memory_bytes`).

    `threads` (CPU only) sets the OpenMP threads of the worker instead of vLLM's pinning of
    every core. Build it under `if __name__ == "__main__":` in scripts: vLLM spawns processes.
    """

    def __init__(
        self,
        model_path: str | Path,
        dtype: str = "bfloat16",
        threads: int | None = None,
        entropy_topk: int = 20,
        sleep_level: int = 0,
        **options: Any,
    ) -> None:
        self.entropy_topk = entropy_topk
        self.asleep = 0  # the level slept at; generate refuses until wake_up
        self.sleep_unsupported = sleep_unsupported() if sleep_level else None
        options.setdefault("max_logprobs", max(20, entropy_topk))
        options.setdefault("seed", 0)
        if sleep_level and self.sleep_unsupported is None:
            options.setdefault("enable_sleep_mode", True)
        cpu = current_platform.is_cpu()
        if cpu:
            if options.get("distributed_executor_backend") == "ray":  # vLLM's needs GPUs
                options["distributed_executor_backend"] = "mp"
            options.setdefault("kv_cache_memory_bytes", CPU_KV_CACHE_BYTES)
            # vLLM 0.32 CPU: a seeded request whose prefill is split in chunks crashes the worker
            # ("CPU Generator does not use offset"); whole prefills avoid that path
            options.setdefault("enable_chunked_prefill", False)
        with _cpu_threads(threads if cpu else None):
            self.llm = vllm.LLM(
                str(model_path),
                dtype=dtype,
                logprobs_mode="processed_logprobs",
                worker_extension_cls=EXTENSION,
                **options,
            )
        self.tokenizer = self.llm.get_tokenizer()
        self.weight_names = _checkpoint_names(Path(model_path))

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        """`params.n` completions per prompt, in prompt order.

        With `params.seed` set, prompt i draws from seeds seed + i*n ... (vLLM gives the n
        children of a request seed + index), so repeated prompts still get distinct samples.
        """
        if self.asleep:
            raise RuntimeError(
                f"generate on an engine asleep at level {self.asleep}: wake_up first"
            )
        enc = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        inputs = [{"prompt_token_ids": ids} for ids in enc]
        sampling = [self._sampling(params, i) for i in range(len(prompts))]
        outputs = self.llm.generate(inputs, sampling, use_tqdm=False)
        return [
            [self._completion(prompt, ids, o) for o in sorted(out.outputs, key=lambda o: o.index)]
            for prompt, ids, out in zip(prompts, enc, outputs, strict=True)
        ]

    def update_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load learner weights (HF names) into every worker; all checkpoint tensors must be
        given (`_check_complete`)."""
        self._check_complete(state_dict)
        with _tensor_file(state_dict) as path:
            self.llm.collective_rpc("load_weights_from_file", args=(path,))
        self.llm.reset_prefix_cache()

    def join_weight_group(
        self, host: str, port: int, world_size: int, rank_offset: int = 1
    ) -> list[int]:
        """Join the learner's broadcast group (`weight_sync`): the engine's vLLM workers take
        ranks `rank_offset`, `rank_offset` + 1, ... (one per tensor-parallel worker). Blocks
        until every party has joined: the learner (rank 0) must join concurrently."""
        return self.llm.collective_rpc(
            "join_weight_group", args=(host, port, rank_offset, world_size)
        )

    def receive_weights(self, meta: Sequence[weight_sync.TensorMeta]) -> int:
        """Receive the weights rank 0 broadcasts (`weight_sync.send`, running concurrently) into
        every worker and load them as `update_weights` does; returns how many arrived. The names
        are checked first: a sender whose receivers refused waits until the group's timeout."""
        self._check_complete(name for name, _, _ in meta)
        counts = self.llm.collective_rpc("receive_weights", args=(list(meta),))
        self.llm.reset_prefix_cache()
        return counts[0]

    def sleep(self, level: int) -> str | None:
        """Free GPU memory between generations (vLLM sleep mode: level 1 discards the KV cache
        and offloads the weights to CPU, level 2 discards both); None once asleep, else why not
        (the platform has no sleep mode: the engine stays awake)."""
        if self.sleep_unsupported is not None:
            return self.sleep_unsupported
        self.llm.sleep(level=level)
        self.asleep = level
        return None

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Reallocate what `sleep` freed (`tags`: "weights", "kv_cache"; None: all). After level
        2, wake the weights, load new ones, then wake the KV cache (vLLM's RLHF order)."""
        if not self.asleep:
            return
        self.llm.wake_up(tags)
        if tags is None or "kv_cache" in tags:
            self.asleep = 0

    def _check_complete(self, names: Iterable[str]) -> None:
        """All checkpoint tensors must be named: vLLM's in-place reload does not undo a partial
        update."""
        missing = sorted(self.weight_names - set(names))
        if missing:
            raise KeyError(f"weights do not match the model: missing {missing}")

    def close(self) -> None:
        """Stop vLLM's engine processes now rather than at interpreter exit."""
        self.llm.llm_engine.engine_core.shutdown()

    def _sampling(self, params: SamplingParams, index: int) -> vllm.SamplingParams:
        seed = None if params.seed is None else params.seed + index * params.n
        return vllm.SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            seed=seed,
            logprobs=self.entropy_topk,  # the sampled token's logprob always comes too
            flat_logprobs=True,
            detokenize=False,  # text is decoded once per completion in `_completion`
        )

    def _completion(self, prompt: str, prompt_ids: list[int], out: Any) -> Completion:
        tokens = list(out.token_ids)
        logprobs, entropies = flat_logprobs_and_entropies(out.logprobs, len(tokens))
        finished = out.finish_reason == "stop"  # on an EOS / stop id: not part of the text,
        shown = tokens[:-1] if finished else tokens  # as HF's, also for a non-special stop id
        return Completion(
            prompt=prompt,
            text=self.tokenizer.decode(shown, skip_special_tokens=True),
            prompt_ids=prompt_ids,
            token_ids=tokens,
            logprobs=logprobs,
            entropies=entropies if self.entropy_topk else [],
            finished=finished,
        )


def flat_logprobs_and_entropies(flat: Any, length: int) -> tuple[list[float], list[float]]:
    """(sampled-token logprob, top-k entropy) per step from vLLM's `FlatLogprobs`.

    Step t holds entries start[t]:end[t]: the sampled token first, then the top k by rank (the
    sampled token again if it is among them). H_k = -sum p log p over the top-k entries only, so
    the sampled token is not counted twice; -inf entries (masked by top-p) add nothing."""
    starts = np.asarray(flat.start_indices, dtype=np.int64)
    if len(starts) != length:
        raise ValueError(f"vLLM returned logprobs for {len(starts)} of {length} tokens")
    if length == 0:
        return [], []
    lp = np.asarray(flat.logprobs, dtype=np.float64)
    sampled = lp[starts]
    with np.errstate(invalid="ignore"):
        terms = np.where(np.isfinite(lp), -np.exp(lp) * lp, 0.0)
    terms[starts] = 0.0
    return sampled.tolist(), np.add.reduceat(terms, starts).tolist()


def sleep_unsupported() -> str | None:
    """Why this platform cannot put vLLM to sleep (vLLM 0.32: CUDA, ROCm and XPU can), or None."""
    if current_platform.is_sleep_mode_available():
        return None
    return f"vLLM sleep mode is not available on {current_platform.device_name} (GPU only)"


def _checkpoint_names(folder: Path) -> set[str]:
    """Tensor names in a model folder's safetensors files (read from the headers only)."""
    names: set[str] = set()
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            names.update(f.keys())
    return names


@contextlib.contextmanager
def _cpu_threads(threads: int | None) -> Iterator[None]:
    """Environment for the worker processes vLLM starts: `threads` OpenMP threads, no pinning."""
    if not threads:
        yield
        return
    env = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(threads)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _tensor_file(state_dict: Mapping[str, torch.Tensor]) -> Iterator[str]:
    """The state dict in a temporary file, in RAM (/dev/shm) where the system has one."""
    folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
    fd, path = tempfile.mkstemp(prefix="omnisched-weights-", suffix=".pt", dir=folder)
    os.close(fd)
    try:
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, path)
        yield path
    finally:
        os.unlink(path)
