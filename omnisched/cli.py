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
from omnisched.exit_noise import drop_teardown_noise

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True)


def _fail(exc: BaseException) -> None:
    cause = getattr(exc, "cause", None)  # raised in a Ray actor: Ray's wrapper holds the traceback
    if isinstance(cause, OmniError):
        exc = cause
    console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@app.command()
def run(
    recipe: Annotated[
        Path | None, typer.Argument(help="recipe YAML, e.g. recipes/tiny.yaml")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Argument(help="dotted overrides key=value")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", help="continue RUN_DIR from its last checkpoint"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="validate and print, do not train")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress display")] = False,
) -> None:
    """Train with a recipe; writes metrics, checkpoints, scheduler state and report.md."""
    from omnisched.config import load_recipe
    from omnisched.preflight import check_runnable

    try:
        if resume is not None:
            if recipe is not None and recipe.suffix not in (".yaml", ".yml"):
                overrides = [str(recipe), *(overrides or [])]  # only overrides were given
            elif recipe is not None:
                raise OmniError("--resume takes the run's own recipe.yaml; give no RECIPE")
            if not (resume / "recipe.yaml").is_file():
                raise OmniError(f"--resume {resume}: no recipe.yaml (is this a run directory?)")
            cfg = load_recipe(resume / "recipe.yaml", overrides or [])
            report = _train(cfg, resume, quiet, resume=True)
            console.print(f"report: {report}")
            typer.echo(str(report.parent))
            return
        if recipe is None:
            raise OmniError("give a RECIPE (e.g. recipes/tiny.yaml) or --resume RUN_DIR")
        cfg = load_recipe(recipe, overrides or [])
        if dry_run:
            import yaml

            from omnisched.orchestration.placement import placement_report

            typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
            plan_text, misfits = placement_report(cfg)
            typer.echo(plan_text)  # the plan first: it helps most when something is refused
            if misfits:
                raise OmniError(f"placement does not fit placement.nodes: {'; '.join(misfits)}")
        check_runnable(cfg)  # what `run` would refuse: refused here, the same words, by both
        if dry_run:
            return
        run_dir = cfg.run.output_dir / f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        report = _train(cfg, run_dir, quiet)
    except OmniError as exc:
        _fail(exc)
    console.print(f"report: {report}")
    typer.echo(str(report.parent))


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a run or reproduction directory")],
) -> None:
    """Regenerate report.md (and plots) from a run directory's scheduler_state.json, or from a
    reproduction directory's results.json."""
    from omnisched.metrics import write_report
    from omnisched.schedule.state import SchedulerState

    if (run_dir / "results.json").is_file():
        from omnisched.repro.report import refresh_outputs

        typer.echo(str(refresh_outputs(run_dir)))
        return
    state_path = run_dir / "scheduler_state.json"
    if not state_path.is_file():
        _fail(
            OmniError(
                f"{run_dir}: no scheduler_state.json or results.json "
                "(is this a run or reproduction directory?)"
            )
        )
    out = write_report(
        run_dir, SchedulerState.load(state_path), title=f"omnisched run `{run_dir.name}`"
    )
    typer.echo(str(out))


_ADDRESS_HELP = "Ray dashboard (Jobs API) address, e.g. http://HEAD:8265; default $RAY_ADDRESS"


@app.command()
def launch(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML, e.g. recipes/omni-thinker-7b.yaml")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="dotted overrides key=value")
    ] = None,
    address: Annotated[str | None, typer.Option("--address", help=_ADDRESS_HELP)] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", help="KEY=VALUE for the job (repeatable)")
    ] = None,
    pip: Annotated[
        list[str] | None,
        typer.Option("--pip", help="requirement or requirements.txt to install (repeatable)"),
    ] = None,
    working_dir: Annotated[
        Path | None,
        typer.Option("--working-dir", help="directory uploaded with the job; default: project"),
    ] = None,
    job_id: Annotated[
        str | None, typer.Option("--job-id", help="submission id; default: generated")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="the cluster validates and prints, no training")
    ] = False,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="stream the logs until the job ends")
    ] = True,
) -> None:
    """Submit a recipe to an existing Ray cluster (Ray Jobs API); prints the job id."""
    from omnisched.orchestration import jobs

    try:
        spec = jobs.build_job(
            recipe,
            overrides or [],
            working_dir=working_dir,
            env_vars=jobs.parse_env(env or []),
            pip=pip or [],
            submission_id=job_id,
            dry_run=dry_run,
        )
        client = jobs.connect(address)
        submitted = jobs.submit(client, jobs.ship_requirements(client, spec))
    except OmniError as exc:
        _fail(exc)
    console.print(f"submitted job {submitted} to {client.get_address()}", highlight=False)
    typer.echo(submitted)
    if follow:
        _follow(client, submitted)


@app.command()
def status(
    job_id: Annotated[str, typer.Argument(help="job id printed by `omnisched launch`")],
    address: Annotated[str | None, typer.Option("--address", help=_ADDRESS_HELP)] = None,
) -> None:
    """Print a launched job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    from omnisched.orchestration import jobs

    try:
        info = jobs.job_info(jobs.connect(address), job_id)
    except OmniError as exc:
        _fail(exc)
    typer.echo(f"{job_id}: {info['status']}")
    if info["message"]:
        console.print(info["message"], highlight=False, soft_wrap=True)


@app.command()
def stop(
    job_id: Annotated[str, typer.Argument(help="job id printed by `omnisched launch`")],
    address: Annotated[str | None, typer.Option("--address", help=_ADDRESS_HELP)] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="wait until the job has ended")
    ] = True,
) -> None:
    """Stop a launched job."""
    from omnisched.orchestration import jobs

    try:
        client = jobs.connect(address)
        if not jobs.stop(client, job_id):
            console.print(f"job {job_id} had already ended", highlight=False)
        final = jobs.wait(client, job_id, timeout_s=120.0) if wait else "stop requested"
    except OmniError as exc:
        _fail(exc)
    typer.echo(f"{job_id}: {final}")


@app.command()
def logs(
    job_id: Annotated[str, typer.Argument(help="job id printed by `omnisched launch`")],
    address: Annotated[str | None, typer.Option("--address", help=_ADDRESS_HELP)] = None,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="keep streaming until the job ends")
    ] = False,
) -> None:
    """Print a launched job's logs."""
    from omnisched.orchestration import jobs

    try:
        client = jobs.connect(address)
        if not follow:
            typer.echo(jobs.job_logs(client, job_id), nl=False)
            return
    except OmniError as exc:
        _fail(exc)
    _follow(client, job_id)


def _follow(client: Any, job_id: str) -> None:
    """Stream a job's logs; exit 1 unless it SUCCEEDED. Ctrl-C leaves the job running."""
    from omnisched.orchestration import jobs

    try:
        final = jobs.follow(client, job_id, lambda text: typer.echo(text, nl=False))
    except OmniError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        console.print(f"stopped following; job {job_id} keeps running (omnisched stop {job_id})")
        raise typer.Exit(code=130) from None
    console.print(f"job {job_id}: {final}", highlight=False)
    if final != "SUCCEEDED":
        raise typer.Exit(code=1)


def _train(cfg: Any, run_dir: Path, quiet: bool, resume: bool = False) -> Path:
    from omnisched.orchestration.controller import Controller

    torch_threads = str(cfg.run.threads)
    os.environ.setdefault("OMP_NUM_THREADS", torch_threads)
    if quiet:
        return Controller(cfg, run_dir, resume=resume).run()
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
        return Controller(cfg, run_dir, progress=view, resume=resume).run()


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


@app.command()
def reproduce(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML, e.g. recipes/repro-tiny.yaml")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="dotted overrides key=value")
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="1 seed, a third of the steps per phase")
    ] = False,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="RL seeds run.seed, +1, ...")] = 5,
    all_orders: Annotated[
        bool, typer.Option("--all-orders", help="also train every domain order (<= 4 domains)")
    ] = False,
    merge_scale: Annotated[
        float, typer.Option("--merge-scale", help="lambda of task arithmetic and TIES")
    ] = 1.0,
    ties_density: Annotated[
        float, typer.Option("--ties-density", help="fraction of each task vector TIES keeps")
    ] = 0.2,
    out: Annotated[
        Path | None, typer.Option("--out", help="output dir; default run.output_dir/repro-...")
    ] = None,
    arms: Annotated[
        str | None,
        typer.Option("--arms", help="comma-separated subset of the arms (base, joint always)"),
    ] = None,
) -> None:
    """Joint vs the BWT curriculum (and its reverse, the structured-first order, the online
    mixtures) vs model merging at equal RL compute, over RL seeds from one shared warm start:
    OUT/results.json, OUT/report.md and plots."""
    from omnisched.config import load_recipe
    from omnisched.repro import runner

    try:
        cfg = load_recipe(recipe, overrides or [])
        if not 0.0 < ties_density <= 1.0:
            raise OmniError(f"--ties-density must be in (0, 1], got {ties_density}")
        picked = tuple(a.strip() for a in arms.split(",")) if arms else None
        opts = runner.ReproOptions(seeds, quick, all_orders, merge_scale, ties_density, picked)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out_dir = out or cfg.run.output_dir / f"repro-{cfg.run.name}-{stamp}"
        os.environ.setdefault("OMP_NUM_THREADS", str(cfg.run.threads))
        path = runner.reproduce(
            cfg, out_dir, opts, say=lambda msg: console.print(msg, highlight=False)
        )
    except OmniError as exc:
        _fail(exc)
    console.print(f"report: {path}")
    typer.echo(str(path.parent))


@app.command()
def simulate(
    worlds: Annotated[int, typer.Option("--worlds", min=2, help="simulated worlds")] = 200,
    arms: Annotated[
        str | None, typer.Option("--arms", help="comma-separated arms (default: all)")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="first world's seed")] = 0,
    processes: Annotated[int, typer.Option("--processes", min=1)] = 2,
    out: Annotated[Path | None, typer.Option("--out", help="write the summary as JSON")] = None,
) -> None:
    """Judge the scheduling policies on simulated worlds where the truth is known: regret to
    the best order against a random order and the uniform mixture, with bootstrap CIs."""
    import json

    from omnisched.simulate.run import run_arena, table

    try:
        names = [a.strip() for a in arms.split(",")] if arms else None
        summary, _, _ = run_arena(worlds, names, seed=seed, processes=processes)
    except OmniError as exc:
        _fail(exc)
    typer.echo(table(summary))
    if out is not None:
        out.write_text(json.dumps(summary.to_json(), indent=1))
        console.print(f"summary: {out}")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    finally:
        drop_teardown_noise()  # triton's "nanobind: leaked ..." lines at interpreter exit


if __name__ == "__main__":
    main()
