"""The ``kmeans`` CLI: one sub-command per stage, calling the same functions as the DAG tasks."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
import typer.core

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="K-means segmentation platform: one command per pipeline stage.")

Day = Annotated[dt.datetime, typer.Option(formats=["%Y-%m-%d"], help="Day (YYYY-MM-DD), UTC.")]


def _settings():
    from pipeline.settings import load_settings

    return load_settings()


_result_stream = None  # the command's real stdout, kept while libraries' prints go to stderr


def _echo(obj) -> None:
    import sys

    print(json.dumps(obj, indent=2, default=str), file=_result_stream or sys.stdout, flush=True)


class _Command(typer.core.TyperCommand):
    """Turns the errors a user can cause into one clear line and exit code 2, not a traceback."""

    def invoke(self, ctx):
        import contextlib
        import sys

        from mlflow.exceptions import MlflowException
        from pydantic import ValidationError

        from pipeline.gates import GateRefused
        from pipeline.registry import AliasMoveInProgress
        from pipeline.rollout import RolloutError

        global _result_stream
        _result_stream = sys.stdout
        try:
            # stdout carries only the command's JSON result; libraries' chatter goes to stderr.
            with contextlib.redirect_stdout(sys.stderr):
                return super().invoke(ctx)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}"
                                 for e in err.errors())
            typer.echo(f"error: {problems}", err=True)
            raise typer.Exit(2) from err
        except (ValueError, LookupError, FileNotFoundError, MlflowException, GateRefused,
                AliasMoveInProgress, RolloutError) as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from err


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs.")] = False):
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "feast", "mlflow", "great_expectations", "alembic", "urllib3",
                  "pipeline.serving.access", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command(cls=_Command)
def generate(
    customers: Annotated[int, typer.Option(min=1, help="Number of customers.")] = 20_000,
    days: Annotated[int, typer.Option(min=1, help="Number of daily partitions.")] = 7,
    start: Day = dt.datetime(2026, 11, 1),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
):
    """Write synthetic customer behaviour to the data lake (Parquet, one partition a day)."""
    from pipeline.datagen import generate_lake

    out = generate_lake(_settings().lake_dir, n_customers=customers, start=start.date(),
                        days=days, seed=seed)
    _echo({"path": str(out.path), "days": out.days, "rows": out.rows})


@app.command(cls=_Command)
def ingest(start: Day, end: Day):
    """Land the lake's days in [start, end) in the offline feature table."""
    from pipeline import training

    _echo(training.ingest(_settings(), start, end))


@app.command(cls=_Command)
def apply():
    """Register the Feast declarations of feature_repo/ (feast apply)."""
    from pipeline.features import apply_repo

    _echo(apply_repo(_settings()))


@app.command(cls=_Command)
def materialize(start: Day, end: Day):
    """Load the latest feature values of [start, end) into the Feast online store."""
    from pipeline.features import materialize as run

    run(_settings(), _utc(start), _utc(end))
    _echo({"materialized": [start.date().isoformat(), end.date().isoformat()]})


@app.command(cls=_Command)
def snapshot(start: Day, end: Day):
    """Build the training snapshot of [start, end) from the Feast feature service."""
    from pipeline import training

    _echo({"snapshot": training.snapshot(_settings(), _utc(start), _utc(end))})


@app.command(cls=_Command)
def validate(snapshot_path: Annotated[Path, typer.Argument(help="Snapshot folder.")]):
    """Run the Great Expectations suite on a snapshot; exit 1 if it fails."""
    from pipeline import training
    from pipeline.validation import ValidationFailed

    try:
        _echo({"report": training.validate(_settings(), str(snapshot_path))})
    except ValidationFailed as err:
        typer.echo(f"validation failed: {err}", err=True)
        raise typer.Exit(1) from err


@app.command(cls=_Command)
def train(
    snapshot_path: Annotated[Path, typer.Argument(help="Snapshot folder.")],
    k_min: Annotated[int, typer.Option(help="Smallest K.")] = 2,
    k_max: Annotated[int, typer.Option(help="Largest K.")] = 8,
    sample_fraction: Annotated[float, typer.Option(help="Share of training rows.")] = 1.0,
    max_iter: Annotated[int, typer.Option(help="Most iterations per K.")] = 50,
    n_init: Annotated[int, typer.Option(help="Initialisations per K.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed.")] = 42,
    engine: Annotated[str, typer.Option(help="spark or local.")] = "spark",
    init: Annotated[str, typer.Option(help="k-means|| or k-means++.")] = "k-means||",
    empty_cluster: Annotated[str, typer.Option(help="farthest or split.")] = "farthest",
):
    """Run the K sweep, choose K, log the run to MLflow."""
    from pipeline import training

    params = training.TrainParams(k_min=k_min, k_max=k_max, sample_fraction=sample_fraction,
                                  max_iter=max_iter, n_init=n_init, seed=seed, engine=engine,
                                  init=init, empty_cluster=empty_cluster)
    _echo(training.train(_settings(), str(snapshot_path), params))


@app.command(cls=_Command)
def evaluate(run_id: str, snapshot_path: Path):
    """Score a run's model and the champion on the same holdout (the run's own split)."""
    from pipeline import training

    _echo(training.evaluate(_settings(), run_id, str(snapshot_path)))


@app.command(cls=_Command)
def gates(
    run_id: str,
    snapshot_path: Annotated[Path, typer.Argument(help="Snapshot folder the run trained on.")],
    validation_report: Annotated[Optional[Path], typer.Option(
        help="Report validate wrote (default: the snapshot's own).")] = None,
):
    """Run the promotion gates (data, quality, comparison, drift) on an evaluated run; exit 1
    if a gate refuses. A drift over the threshold is reported as needing review."""
    from pipeline import training
    from pipeline.gates import GateRefused

    try:
        _echo(training.gates(_settings(), run_id, str(snapshot_path),
                             str(validation_report) if validation_report else None))
    except GateRefused as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(1) from err


@app.command(cls=_Command)
def register(run_id: str):
    """Register a run's model as a new version with alias challenger (refused if its gates
    refused it)."""
    from pipeline import training

    _echo(training.register(_settings(), run_id))


@app.command(cls=_Command)
def promote(
    version: Annotated[str, typer.Argument(help="Model version to make champion.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the audit trail).")],
    actor: Annotated[Optional[str], typer.Option(help="Who (default: your user name).")] = None,
):
    """Make a version champion: previous <- old champion; challenger removed if it was this
    version. Refused if another promotion or rollback is in progress."""
    from pipeline import gates, registry

    settings = _settings()
    found = registry.model_version(settings, version)
    figures = gates.figures_of(gates.load_summary(settings, found.run_id))
    _echo({**registry.promote(settings, version, reason=reason, actor=actor, figures=figures),
           "server": _sync_server(settings)})


@app.command(cls=_Command)
def rollback(
    reason: Annotated[str, typer.Option(help="Why (kept in the audit trail).")],
    to_version: Annotated[Optional[str], typer.Option(
        help="Version to return to (default: the one behind 'previous').")] = None,
    actor: Annotated[Optional[str], typer.Option(help="Who (default: your user name).")] = None,
):
    """Make previous (or --to-version) champion again; challenger removed. Refused if another
    promotion or rollback is in progress."""
    from pipeline import registry

    settings = _settings()
    _echo({**registry.rollback(settings, reason=reason, to_version=to_version, actor=actor),
           "server": _sync_server(settings)})


def _sync_server(settings):
    """Serve the new champion at once where a rollout backend is configured."""
    from pipeline.rollout import sync_stable

    return sync_stable(settings)


@app.command(cls=_Command)
def rollout(
    version: Annotated[Optional[str], typer.Argument(
        help="Version to roll out (default: the one behind 'challenger').")] = None,
    resume: Annotated[bool, typer.Option(
        help="Finish an interrupted rollout instead of starting one.")] = False,
    steps: Annotated[Optional[str], typer.Option(
        help="Steps, e.g. 'shadow,10,50,100' (KMEANS_ROLLOUT_STEPS).")] = None,
    interval: Annotated[Optional[float], typer.Option(
        min=0.1, help="Analysis interval in seconds (KMEANS_ROLLOUT_INTERVAL_SECONDS).")] = None,
):
    """Roll a version out through the steps, analysing each against the champion; promote it,
    or roll it back at the first failed step."""
    from dataclasses import asdict

    from pipeline import registry, rollout as ro

    settings = _settings()
    controller = ro.controller_for(settings, steps=steps, interval_s=interval)
    if resume:
        state = controller.resume()
        _echo(asdict(state) if state else {"resumed": None, "reason": "nothing in progress"})
        return
    if version is None:
        found = registry.alias_version(settings, "challenger")
        if found is None:
            raise LookupError(f"model {settings.model_name!r} has no challenger to roll out")
        version = str(found.version)
    _echo(asdict(controller.start(version)))


@app.command(cls=_Command)
def audit():
    """Print the audit trail of alias moves."""
    from pipeline.registry import read_audit

    _echo(read_audit(_settings()))


@app.command(cls=_Command)
def serve(
    alias: Annotated[str, typer.Option(help="Model alias to serve as the stable version.")] =
    "champion",
    version: Annotated[Optional[str], typer.Option(
        help="Serve this registry version instead of the alias (KServe canary revisions).")] =
    None,
    canary_alias: Annotated[str, typer.Option(
        help="Alias loaded as the canary when it exists ('' for none).")] = "challenger",
    canary_mode: Annotated[str, typer.Option(
        help="shadow: the canary scores, the stable answers; canary: the canary answers its "
             "weight's share.")] = "shadow",
    canary_weight: Annotated[float, typer.Option(
        min=0, max=100, help="Percent of keys the canary answers (canary mode).")] = 0.0,
    host: Annotated[Optional[str], typer.Option(help="Bind address (KMEANS_SERVING_HOST).")] = None,
    port: Annotated[Optional[int], typer.Option(min=0, max=65535,
                                                help="Port (KMEANS_SERVING_PORT).")] = None,
):
    """Serve the model behind an alias (Open Inference Protocol v2 and KServe v1)."""
    from pipeline.serving.server import serve as run
    from pipeline.settings import load_settings

    if canary_mode not in ("shadow", "canary"):
        raise ValueError(f"--canary-mode {canary_mode!r} should be 'shadow' or 'canary'")
    overrides = {k: v for k, v in (("serving_host", host), ("serving_port", port)) if v is not None}
    run(load_settings(**overrides), alias=alias, version=version, canary_alias=canary_alias or None,
        canary_mode=canary_mode, canary_weight=canary_weight)


@app.command(cls=_Command)
def demo(
    customers: Annotated[int, typer.Option(min=100, help="Number of customers.")] = 20_000,
    days: Annotated[int, typer.Option(min=1, help="Days of data.")] = 7,
    seed: Annotated[int, typer.Option(help="Seed of the data.")] = 7,
):
    """Sample data, the training DAG end to end, the model served, example predictions."""
    from pipeline.demo import run_demo

    run_demo(_settings(), customers=customers, days=days, seed=seed)


def _utc(value: dt.datetime) -> dt.datetime:
    """A day typed on the command line (naive) is a UTC day."""
    return value.replace(tzinfo=dt.timezone.utc)


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    main()
