"""The learner as the controller sees it: one `LearnerWorker` actor, or a DeepSpeed
data-parallel world of `placement.learner_workers` ranks driven in lockstep.

A world starts in two calls: rank 0 reports its node's IP and a free port (`rendezvous`, so it
works across nodes), then every rank joins the process group at once (`join`). Each GRPO step,
rank 0 turns the scored groups into samples (advantages computed once), the driver `deal`s them so
that every rank gets as many micro-batches, and the ranks step together (DeepSpeed averages
their gradients). Weights, saves and checkpoints are collective calls; rank 0's result is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omnisched.config.schema import Recipe
from omnisched.errors import OmniError
from omnisched.learner.base import ScoredGroup, TrainSample
from omnisched.learner.batching import plan_micro_batches, seq_len
from omnisched.orchestration.backend import Backend, InlineBackend
from omnisched.orchestration.placement import Seat
from omnisched.orchestration.workers import LearnerWorker, trainer_state_file


def deal(
    samples: Sequence[TrainSample],
    ranks: int,
    micro_batch_size: int,
    micro_batch_tokens: int | None = None,
) -> list[list[TrainSample]]:
    """Split `samples` over `ranks` so that each rank gets the same number of micro-batches of up
    to `micro_batch_size` samples, with completion tokens balanced greedily (longest first, to
    the rank with the fewest tokens that still has room). Samples with empty completions join no
    micro-batch; they go to the ranks with the fewest samples.

    When n non-empty samples cannot give every rank the same count m = ceil(n / (ranks * size))
    of micro-batches (e.g. n < ranks), pad samples (the fewest that make it possible, at most
    ranks - 1) fill the ranks that are short: each is the shortest sample's prompt plus its first
    completion token, marked `pad` so that it carries no loss at all. Every rank divides its loss
    by the whole batch's counts (`TrainBatch`) over the world size and DeepSpeed averages the
    ranks' gradients, so the step equals the single-learner step on all samples, pads or not.

    With `micro_batch_tokens` (micro-batches by a token budget, `micro_batch.plan_micro_batches`)
    ranks get equal sample counts (within one) with prompt + completion tokens balanced the same
    way; m is then the most micro-batches any rank's share makes, every rank with fewer samples
    than m gets pads up to m, and each rank halves its micro-batches up to m
    (`DeepSpeedLearner`, `micro_batch.split_to_count`)."""
    by_tokens = micro_batch_tokens is not None
    length = seq_len if by_tokens else lambda s: len(s.completion_ids)
    full = sorted((s for s in samples if s.completion_ids), key=length, reverse=True)
    if not full:
        raise ValueError("train_step needs at least one sample with a non-empty completion")
    shortest = full[-1]
    pad = TrainSample(
        shortest.prompt_ids,
        shortest.completion_ids[:1],
        0.0,
        None if shortest.old_logprobs is None else shortest.old_logprobs[:1],
        pad=True,
    )
    items = list(full)
    if not by_tokens:
        batches = -(-len(full) // (ranks * micro_batch_size))  # per rank, the fewest that hold all
        fewest = (batches - 1) * micro_batch_size + 1  # samples per rank that still need `batches`
        items += [pad] * max(0, ranks * fewest - len(full))
    room = [len(items) // ranks + (r < len(items) % ranks) for r in range(ranks)]
    shares: list[list[TrainSample]] = [[] for _ in range(ranks)]
    tokens = [0] * ranks
    for s in items:
        r = min((r for r in range(ranks) if len(shares[r]) < room[r]), key=lambda r: tokens[r])
        shares[r].append(s)
        tokens[r] += length(s)
    if by_tokens:
        most = max(len(plan_micro_batches(share, 1, micro_batch_tokens)) for share in shares)
        for share in shares:
            share.extend([pad] * (most - len(share)))
    for s in samples:
        if not s.completion_ids:
            min(shares, key=len).append(s)
    return shares


def merge_metrics(
    per_rank: list[dict[str, float]], samples: Sequence[TrainSample], pads: int
) -> dict[str, float]:
    """One step's metrics over ranks: `tokens_per_s` summed, `step_time_s` the slowest rank's,
    everything else (loss, grad_norm, clip_frac, ratio, entropy, kl) the mean over ranks; the
    mean loss is the objective whose (rank-averaged) gradient was applied. `tokens` and
    `samples_trained` count the real `samples`, not the `pads`."""
    summed, slowest = {"tokens_per_s"}, {"step_time_s"}
    out: dict[str, float] = {}
    for key in per_rank[0]:
        values = [m[key] for m in per_rank]
        if key in summed:
            out[key] = sum(values)
        elif key in slowest:
            out[key] = max(values)
        else:
            out[key] = sum(values) / len(values)
    out["tokens"] = float(sum(len(s.completion_ids) for s in samples))
    return {**out, "pad_samples": pads, "samples_trained": len(samples)}


def check_resume_world_size(path: str | Path, world_size: int) -> None:
    """Fail with one line when the checkpoint's trainer state was written by another number of
    learner ranks (optimizer states are per rank; ZeRO partitions them by world size)."""
    folder = Path(path)
    if (folder / trainer_state_file(0, 1)).is_file():
        saved = 1
    else:
        saved = sum(1 for _ in folder.glob("trainer_state_rank*.pt"))
    if saved and saved != world_size:
        raise OmniError(
            f"resume: checkpoint {folder.name} holds the trainer state of {saved} learner rank(s) "
            f"but placement.learner_workers={world_size}; resume with placement.learner_workers="
            f"{saved}"
        )


class LearnerGroup:
    """`train_groups`, `state_dict`, `save`, `save_checkpoint`, `load_trainer_state` (and the
    broadcast weight sync's `join_weight_group`, `broadcast_weights`) on one learner actor or on
    every rank of a DeepSpeed world (needs Ray: one process per rank)."""

    def __init__(
        self,
        backend: Backend,
        recipe: Recipe,
        model_path: str,
        seats: Sequence[Seat] | None = None,
    ) -> None:
        """`seats[r]`: rank r's placement-group bundle and resources (`placement.seats`);
        None: the recipe's resources, anywhere."""
        r, pl = recipe, recipe.placement
        self.backend = backend
        self.micro_batch = (r.learner.micro_batch_size, r.learner.micro_batch_tokens)
        self._pending: list[Any] = []  # other ranks' share of a collective call still running
        args = (
            r.learner.backend,
            model_path,
            r.learner,
            r.run.threads,
            r.run.seed,
            r.rollout.max_new_tokens,
        )
        sampling = {"temperature": r.rollout.temperature}
        default = Seat(None, pl.learner_cpus_per_worker, pl.learner_gpus_per_worker)
        where = list(seats) if seats is not None else [default] * pl.learner_workers
        world = {"world_size": pl.learner_workers} if pl.learner_workers > 1 else {}
        self.workers = [
            backend.spawn(
                LearnerWorker,
                *args,
                **world,
                **sampling,
                num_cpus=seat.cpus,
                num_gpus=seat.gpus,
                bundle=seat.bundle,
            )
            for seat in where
        ]
        if pl.learner_workers == 1:
            return
        addr, port = self._ask(self.workers[0], LearnerWorker.rendezvous)
        self.backend.gather(
            [
                self.backend.call(w, LearnerWorker.join, rank, addr, port)
                for rank, w in enumerate(self.workers)
            ]
        )

    def train_groups(self, groups: Sequence[ScoredGroup]) -> dict[str, float]:
        """One GRPO optimizer step on the groups' samples that carry signal; metrics as
        `merge_metrics` (`samples_trained` counts real samples, not pads)."""
        if len(self.workers) == 1:
            return self._ask(self.workers[0], LearnerWorker.train_groups, groups)
        batch = self._ask(self.workers[0], LearnerWorker.train_batch, groups)
        samples = batch.samples
        if not samples:
            return {"samples_trained": 0}
        shares = deal(samples, len(self.workers), *self.micro_batch)
        counts = (batch.num_seqs, batch.num_tokens)  # the whole batch's, on every rank
        per_rank = self.backend.gather(
            [
                self.backend.call(w, LearnerWorker.train_step, share, *counts)
                for w, share in zip(self.workers, shares)
            ]
        )
        return merge_metrics(per_rank, samples, sum(map(len, shares)) - len(samples))

    def state_dict(self, dtype: str | None = None) -> Any:
        """A future of the full policy weights (rank 0's, cast to `dtype` if given), for
        `backend.gather` or to hand to other workers unopened; the other ranks' part of the call
        is awaited by the next call."""
        return self._from_rank0(LearnerWorker.state_dict, dtype)

    def live_weights(self) -> Any:
        """Rank 0's policy tensors themselves (no copy) when the learner shares the driver's
        process (inline backend, one rank), else None."""
        if len(self.workers) > 1 or not isinstance(self.backend, InlineBackend):
            return None
        return self._ask(self.workers[0], LearnerWorker.live_weights)

    def weight_group_address(self) -> tuple[str, int]:
        """Rank 0's node IP and a free port there, to host the rollout weight group's store."""
        return self._ask(self.workers[0], LearnerWorker.rendezvous)

    def join_weight_group(self, host: str, port: int, world_size: int) -> Any:
        """Rank 0 joins the rollout engines' broadcast group as its sender (only rank 0 joins):
        a future of the weights metadata; the engines must join concurrently."""
        return self._from_rank0(LearnerWorker.join_weight_group, host, port, world_size)

    def broadcast_weights(self) -> Any:
        """Rank 0 broadcasts the policy weights to the group's engines: a future of the metadata;
        the engines must receive concurrently."""
        return self._from_rank0(LearnerWorker.broadcast_weights)

    def save(self, path: str) -> str:
        """The policy as an HF folder at `path` (rank 0 writes it)."""
        return self._on_all(LearnerWorker.save, path)

    def save_checkpoint(self, path: str) -> str:
        """Weights plus each rank's optimizer and RNG state (`trainer_state_file`)."""
        return self._on_all(LearnerWorker.save_checkpoint, path)

    def load_trainer_state(self, path: str) -> bool:
        """Restore each rank's optimizer and RNG state from a checkpoint of the same world size."""
        check_resume_world_size(path, len(self.workers))
        return self._on_all(LearnerWorker.load_trainer_state, path)

    def _on_all(self, method: Callable[..., Any], *args: Any) -> Any:
        """Call `method` on every rank at once (collectives need all of them); rank 0's result."""
        self._settle()
        return self.backend.gather([self.backend.call(w, method, *args) for w in self.workers])[0]

    def _from_rank0(self, method: Callable[..., Any], *args: Any) -> Any:
        """A future of rank 0's `method`, which reads the full weights: the other ranks call
        `state_dict` meanwhile (under ZeRO-3 they hold shards of every parameter), and that part
        is awaited by the next call."""
        futures = [self.backend.call(self.workers[0], method, *args)]
        futures += [self.backend.call(w, LearnerWorker.state_dict) for w in self.workers[1:]]
        self._pending.extend(futures[1:])
        return futures[0]

    def _ask(self, worker: Any, method: Callable[..., Any], *args: Any) -> Any:
        self._settle()
        return self.backend.gather([self.backend.call(worker, method, *args)])[0]

    def _settle(self) -> None:
        """Wait for the other ranks' part of `state_dict` (None each), raising their errors."""
        if self._pending:
            pending, self._pending = self._pending, []
            self.backend.gather(pending)
