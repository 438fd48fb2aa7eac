"""`omnisched` command line: run a recipe, regenerate a report, check a recipe."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from omnisched.errors import OmniError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True)


def _fail(exc: BaseException) -> None:
    console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML, e.g. recipes/tiny.yaml")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="dotted overrides key=value")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="validate and print, do not train")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress display")] = False,
) -> None:
    """Train with a recipe; writes metrics, checkpoints, scheduler state and report.md."""
    from omnisched.config import load_recipe

    try:
        cfg = load_recipe(recipe, overrides or [])
        if dry_run:
            import yaml

            typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
            return
        run_dir = cfg.run.output_dir / f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        report = _train(cfg, run_dir, quiet)
    except OmniError as exc:
        _fail(exc)
    console.print(f"report: {report}")
    typer.echo(str(report.parent))


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="a run directory")]) -> None:
    """Regenerate report.md (and plots) from a run directory's scheduler_state.json."""
    from omnisched.metrics import write_report
    from omnisched.schedule.state import SchedulerState

    state_path = run_dir / "scheduler_state.json"
    if not state_path.is_file():
        _fail(OmniError(f"{run_dir}: no scheduler_state.json (is this a run directory?)"))
    out = write_report(
        run_dir, SchedulerState.load(state_path), title=f"omnisched run `{run_dir.name}`"
    )
    typer.echo(str(out))


def _train(cfg: Any, run_dir: Path, quiet: bool) -> Path:
    from omnisched.orchestration.controller import Controller

    torch_threads = str(cfg.run.threads)
    os.environ.setdefault("OMP_NUM_THREADS", torch_threads)
    if quiet:
        return Controller(cfg, run_dir).run()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        view = _ProgressView(bar)
        return Controller(cfg, run_dir, progress=view).run()


class _ProgressView:
    """Turns controller events into rich progress bars and per-phase accuracy tables."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.tasks: dict[str, Any] = {}

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == "sft":
            self._update(
                "warm start (SFT)", info["step"], info["total"], f"loss {info['loss']:.3f}"
            )
        elif event == "phase":
            self.bar.console.print(
                f"[bold]phase {info['index'] + 1}/{info['total']}[/]: {'+'.join(info['domains'])} "
                f"- {info['reason']}",
                highlight=False,
            )
            self.tasks.pop("step", None)
        elif event == "step":
            rew = info.get("reward/mean", 0.0)
            self._update(
                "GRPO steps", info["step"] + 1, info["total"], f"reward {rew:.3f}", key="step"
            )
        elif event == "eval":
            table = Table(title=f"held-out eval: {info['label']}", show_edge=False)
            table.add_column("domain")
            table.add_column("accuracy", justify="right")
            table.add_column("entropy", justify="right")
            for d, a in info["accuracy"].items():
                table.add_row(d, f"{a:.3f}", f"{info['entropy'][d]:.3f}")
            self.bar.console.print(table)

    def _update(self, name: str, done: int, total: int, info: str, key: str | None = None) -> None:
        key = key or name
        if key not in self.tasks:
            self.tasks[key] = self.bar.add_task(name, total=total, info="")
        self.bar.update(self.tasks[key], completed=done, total=total, info=info)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
