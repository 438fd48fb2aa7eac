"""Resumable runs: step checkpoints written atomically, and metrics cut back to the checkpoint.

A checkpoint is a folder `checkpoints/step-NNNNNN/` holding the policy as an HF model folder, the
learner's optimizer state and `controller.json` (global step, phase, step within the phase, the
prompt sampler's RNG, timings, and the scheduler's state as it was at that step: a run killed
between an evaluation the scheduler recorded and the checkpoint after it resumes from the older
checkpoint with the scheduler's state of that moment, so that phase's steps run again).
It is written under a temporary name and renamed, then the
`checkpoints/latest` pointer is replaced atomically, so a run killed at any instant leaves either
the previous checkpoint or the new one, never a half-written one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
CONTROLLER_FILE = "controller.json"
POINTER = "latest"


def write_checkpoint(
    root: Path, step: int, state: dict[str, Any], save_model: Callable[[str], Any], keep: int = 2
) -> Path:
    """Create `root/step-<step>` atomically: `save_model(tmp_dir)` writes the weights and
    optimizer, `state` goes to controller.json; then repoint `latest` and prune old ones."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}.partial-"))
    try:
        save_model(str(tmp))
        (tmp / CONTROLLER_FILE).write_text(json.dumps(state))
        if final.exists():  # re-checkpointing the same step after a resume
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _atomic_write(root / POINTER, final.name)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint `latest` points to and its controller state, or None."""
    pointer = root / POINTER
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    state_file = path / CONTROLLER_FILE
    if not state_file.is_file():
        return None
    return path, json.loads(state_file.read_text())


def truncate_metrics(path: Path, last_step: int, kept_evals: Iterable[str]) -> tuple[int, int]:
    """Rewrite metrics.jsonl as it was at the checkpoint: train records up to `last_step`, the
    evaluations whose results the scheduler kept, no timing record. Returns (kept, dropped)."""
    if not path.is_file():
        return 0, 0
    keep_labels = set(kept_evals)
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:  # a line cut by the kill
            dropped += 1
            continue
        kind = rec.get("kind")
        ok = (kind == "train" and rec.get("step", 0) <= last_step) or (
            kind == "eval" and rec.get("label") in keep_labels
        )
        if ok:
            kept.append(line)
        else:
            dropped += 1
    _atomic_write(path, "".join(f"{x}\n" for x in kept))
    return len(kept), dropped


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class ResumePoint:
    """Where a resumed run continues: the checkpoint's weights and the controller's position."""

    path: Path
    step: int
    phase: int
    step_in_phase: int
    rng: list[Any]
    timings: dict[str, float] = field(default_factory=dict)


def resume_point(run_dir: Path, completed_evals: Callable[[], list[str]]) -> ResumePoint | None:
    """The latest step checkpoint of `run_dir`, with the scheduler's state it holds restored and
    metrics.jsonl cut back to it (keeping the evaluations `completed_evals()` names: those the
    scheduler's saved state holds). Without a
    checkpoint the run starts over in the same directory: its scheduler state and metrics go."""
    root = run_dir / "checkpoints"
    found = latest_checkpoint(root)
    if found is None:
        (run_dir / "scheduler_state.json").unlink(missing_ok=True)
        truncate_metrics(run_dir / "metrics.jsonl", 0, [])
        log.warning("resume: no checkpoint in %s; starting the run over", root)
        return None
    path, ctl = found
    if ctl.get("scheduler") is not None:  # the scheduler's state at the checkpoint's step
        _atomic_write(run_dir / "scheduler_state.json", json.dumps(ctl["scheduler"], indent=1))
    kept, dropped = truncate_metrics(run_dir / "metrics.jsonl", ctl["step"], completed_evals())
    log.warning(
        "resume: %s at step %d (phase %d, step %d of it); metrics kept %d, dropped %d",
        path.name, ctl["step"], ctl["phase"], ctl["step_in_phase"], kept, dropped,
    )  # fmt: skip
    return ResumePoint(
        path, ctl["step"], ctl["phase"], ctl["step_in_phase"], ctl["rng"], ctl.get("timings", {})
    )
