"""Which samples share a micro-batch: a sample count, or a token budget over length-sorted
samples (`learner.micro_batch_tokens`). Pure Python (the driver deals samples to learner ranks
with it, torch-free). Grouping never changes a step's loss or gradient: every micro-batch loss
is divided by the whole batch's counts (`step.Normalisers`)."""

from __future__ import annotations

from collections.abc import Sequence

from omnisched.errors import ConfigError
from omnisched.learner.base import TrainSample


def seq_len(s: TrainSample) -> int:
    """The tokens a sample takes in a micro-batch row: prompt + completion."""
    return len(s.prompt_ids) + len(s.completion_ids)


def padded_tokens(chunk: Sequence[TrainSample]) -> int:
    """rows x longest row: what a right-padded micro-batch of `chunk` holds."""
    return len(chunk) * max(map(seq_len, chunk))


def plan_micro_batches(
    samples: Sequence[TrainSample], size: int, max_tokens: int | None = None
) -> list[list[TrainSample]]:
    """The samples with a completion, longest first, cut into micro-batches: `size` samples
    each, or with `max_tokens` (`learner.micro_batch_tokens`) each as many as keep rows x
    longest row <= max_tokens. Sorting first keeps the padding small; order never changes the
    loss. Empty completions carry no token loss (they still count in the step's num_seqs)."""
    order = sorted((s for s in samples if s.completion_ids), key=seq_len, reverse=True)
    if max_tokens is None:
        return [order[i : i + size] for i in range(0, len(order), size)]
    if order and seq_len(order[0]) > max_tokens:
        raise ConfigError(
            f"learner.micro_batch_tokens={max_tokens} is smaller than a sample of "
            f"{seq_len(order[0])} tokens (prompt + completion); raise it to at least that"
        )
    chunks: list[list[TrainSample]] = []
    for s in order:
        if chunks and (len(chunks[-1]) + 1) * seq_len(chunks[-1][0]) <= max_tokens:
            chunks[-1].append(s)
        else:
            chunks.append([s])
    return chunks


def split_to_count(chunks: list[list[TrainSample]], count: int) -> list[list[TrainSample]]:
    """Halve the micro-batch holding the most padded tokens until there are `count` (every
    data-parallel rank must run as many); ValueError when too few samples to make that many."""
    chunks = list(chunks)
    while len(chunks) < count:
        splittable = [i for i, c in enumerate(chunks) if len(c) > 1]
        if not splittable:
            raise ValueError(f"{sum(map(len, chunks))} samples cannot make {count} micro-batches")
        i = max(splittable, key=lambda i: padded_tokens(chunks[i]))
        half = (len(chunks[i]) + 1) // 2
        chunks[i : i + 1] = [chunks[i][:half], chunks[i][half:]]
    return chunks
