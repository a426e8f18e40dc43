"""The ``kmeans`` CLI: one sub-command per stage, calling the same functions as the DAG tasks."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import inspect
import json
import logging
import sys
import typing
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
import typer.core
from pydantic import BaseModel, ValidationError

from pipeline import registry
from pipeline.core import preflight
from pipeline.core.logs import quiet_dependencies
from pipeline.core.settings import load_settings
from pipeline.data import features
from pipeline.data.datagen import DRIFT_KINDS, Drift, default_start, generate_lake
from pipeline.data.ingest import ingest_lake
from pipeline.data.params import IntervalParams
from pipeline.data.sources import postgres, stream
from pipeline.data.validation import ValidationFailed, validate_snapshot
from pipeline.demo import run_demo
from pipeline.engine.staging import clean_stage, executor_stage_root, stage_usage
from pipeline.monitoring.exporter import make_server as make_exporter
from pipeline.monitoring.window import monitor_window, prometheus_path
from pipeline.orchestration import flow
from pipeline.orchestration.airflow_api import emit_champion_moved
from pipeline.promotion import gates as gate_checks
from pipeline.promotion.gates import GateRefused
from pipeline.promotion.params import PublishParams, RollbackParams
from pipeline.promotion.publish import publish_segments
from pipeline.promotion.register import register as register_run
from pipeline.registry import AliasMoveInProgress
from pipeline.rollout import controller as ro
from pipeline.rollout.base import RolloutError
from pipeline.serving.params import ServeParams
from pipeline.serving.server import serve as run_server
from pipeline.training import stages
from pipeline.training.params import TrainParams

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="K-means segmentation platform: one command per pipeline stage.")

Day = Annotated[dt.datetime, typer.Option(formats=["%Y-%m-%d"], help="Day (YYYY-MM-DD), UTC.")]

def _settings(**overrides):
    """The settings; under the production profile only once every server they name answers
    (:mod:`pipeline.core.preflight`: one line naming each missing piece, exit code 2)."""
    settings = load_settings(**overrides)
    preflight.check(settings)
    return settings


_result_stream = None  # the command's real stdout, kept while libraries' prints go to stderr


def _echo(obj) -> None:
    print(json.dumps(obj, indent=2, default=str), file=_result_stream or sys.stdout, flush=True)


class _Command(typer.core.TyperCommand):
    """Turns the errors a user can cause into one clear line and exit code 2, not a traceback."""

    def invoke(self, ctx):
        from mlflow.exceptions import MlflowException

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


def options_from(model: type[BaseModel]):
    """Give a command one option per field of ``model`` (name, default, help and choices from
    the field) and call it with the validated model as ``params``: the model is the one place
    the options are declared, as the DAG's Params are derived from it too."""
    def wrap(fn):
        signature = inspect.signature(fn)
        # The command's own parameters keep their Annotated help (resolved: the module's
        # annotations are strings, which typer reads no further once the signature is new).
        own = typing.get_type_hints(fn, include_extras=True)
        kept = [p.replace(annotation=own.get(p.name, p.annotation))
                for p in signature.parameters.values() if p.name != "params"]
        added, hints = [], {}
        for name, field in model.model_fields.items():
            annotation, flag = field.annotation, f"--{name.replace('_', '-')}"
            if annotation in (dt.datetime, dt.datetime | None):
                # an ISO date-time, parsed by the model (typer's formats know no time zone)
                annotation = str if annotation is dt.datetime else str | None
            if annotation is bool:  # a switch both ways, as typer gives an undeclared bool
                flag = f"{flag}/--no-{name.replace('_', '-')}"
            option = typer.Option(field.default, flag, help=field.description,
                                  show_default=True)
            added.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                           default=option, annotation=annotation))
            hints[name] = annotation

        @functools.wraps(fn)
        def command(**kwargs):
            values = {name: kwargs.pop(name) for name in model.model_fields}
            return fn(params=model(**values), **kwargs)

        command.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*kept, *added])
        command.__annotations__ = {**{k: v for k, v in own.items() if k != "params"}, **hints}
        del command.__wrapped__  # typer must read the new signature, not the original's
        return command
    return wrap


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v",
                                                help="Debug logs and dependencies' warnings.")]
          = False):
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        quiet_dependencies()


@app.command(cls=_Command)
def generate(
    customers: Annotated[int, typer.Option(min=1, help="Number of customers.")] = 20_000,
    days: Annotated[int, typer.Option(min=1, help="Number of daily partitions.")] = 7,
    start: Annotated[dt.datetime | None, typer.Option(
        formats=["%Y-%m-%d"],
        help="First day (YYYY-MM-DD), UTC; default: the days end yesterday, so a daily run "
             "scheduled today finds its window.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    drift: Annotated[str | None, typer.Option(
        help=f"Inject drift: one of {', '.join(DRIFT_KINDS)}.")] = None,
    drift_from: Annotated[dt.datetime | None, typer.Option(
        formats=["%Y-%m-%d"],
        help="First drifted day (YYYY-MM-DD); default: the last day.")] = None,
    drift_strength: Annotated[float, typer.Option(
        min=0.0, help="Size of a shift or trend (1.0: spend x3, sessions x2, ...).")] = 1.0,
):
    """Write synthetic customer behaviour to the data lake (Parquet, one partition a day),
    optionally with drift from a given day on."""
    first = start.date() if start else default_start(days)
    injected = None
    if drift is not None:
        drifted = drift_from.date() if drift_from else first + dt.timedelta(days=days - 1)
        offset = (drifted - first).days
        if not 0 <= offset < days:
            raise ValueError(f"--drift-from {drifted} is outside the generated days "
                             f"{first} .. {first + dt.timedelta(days=days - 1)}")
        injected = Drift(drift, start=offset, strength=drift_strength)
    out = generate_lake(_settings().lake_dir, n_customers=customers, start=first, days=days,
                        seed=seed, drift=injected)
    _echo({"path": str(out.path), "days": out.days, "rows": out.rows,
           **({"drift": {"kind": drift, "from": out.days[injected.start],
                         "strength": drift_strength}} if injected else {})})


@app.command(cls=_Command)
def ingest(
    start: Day,
    end: Day,
    delete_missing: Annotated[bool, typer.Option(
        "--delete-missing",
        help="Delete the landed data of a day gone from the lake (without it, the landing is "
             "kept and the day reported in missing_days).")] = False,
):
    """Land the lake's days in [start, end) in the offline feature table."""
    _echo(ingest_lake(_settings(), start.date(), end.date(),
                      delete_missing=delete_missing).to_dict())


@app.command(cls=_Command)
def apply():
    """Register the Feast declarations of feature_repo/ (feast apply)."""
    _echo(features.apply_repo(_settings()))


@app.command(cls=_Command)
def materialize(start: Day, end: Day):
    """Load the latest feature values of [start, end) into the Feast online store."""
    features.materialize(_settings(), _utc(start), _utc(end))
    _echo({"materialized": [start.date().isoformat(), end.date().isoformat()]})


@app.command(cls=_Command)
def snapshot(start: Day, end: Day):
    """Build the training snapshot of [start, end) from the Feast feature service."""
    settings = _settings()
    features.apply_repo(settings)
    _echo({"snapshot": features.training_snapshot(settings, _utc(start), _utc(end)).path})


@app.command(cls=_Command)
def validate(snapshot_path: Annotated[str, typer.Argument(help="Snapshot folder or URI.")]):
    """Run the Great Expectations suite on a snapshot; exit 1 if it fails."""
    try:
        result = validate_snapshot(_settings(), features.Snapshot.load(snapshot_path))
    except ValidationFailed as err:
        typer.echo(f"validation failed: {err}", err=True)
        raise typer.Exit(1) from err
    _echo({"report": result.report_html})


@app.command(cls=_Command)
@options_from(TrainParams)
def train(snapshot_path: Annotated[str, typer.Argument(help="Snapshot folder or URI.")], *,
          params: TrainParams):
    """Run the K sweep, choose K, log the run to MLflow."""
    _echo(stages.train(_settings(), str(snapshot_path), params))


@app.command(cls=_Command)
def evaluate(run_id: str, snapshot_path: str):
    """Score a run's model and the champion on the same holdout (the run's own split)."""
    _echo(stages.evaluate(_settings(), run_id, str(snapshot_path)))


@app.command(cls=_Command)
def gates(
    run_id: str,
    snapshot_path: Annotated[str, typer.Argument(
        help="Snapshot folder (or URI) the run trained on.")],
    validation_report: Annotated[Path | None, typer.Option(
        help="Report validate wrote (default: the snapshot's own).")] = None,
):
    """Run the promotion gates (data, quality, comparison, drift) on an evaluated run; exit 1
    if a gate refuses. A drift over the threshold is reported as needing review."""
    try:
        _echo(gate_checks.check(_settings(), run_id, str(snapshot_path),
                                str(validation_report) if validation_report else None))
    except GateRefused as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(1) from err


@app.command(cls=_Command)
def register(run_id: str):
    """Register a run's model as a new version with alias challenger (refused if its gates
    refused it)."""
    _echo(register_run(_settings(), run_id))


@app.command(cls=_Command)
def promote(
    version: Annotated[str, typer.Argument(help="Model version to make champion.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the audit trail).")],
    actor: Annotated[str | None, typer.Option(help="Who (default: your user name).")] = None,
):
    """Make a version champion: previous <- old champion; challenger removed if it was this
    version. Refused if another promotion or rollback is in progress. Then the live server is
    told, and Airflow (a champion asset event: kmeans_publish republishes the segments)."""
    settings = _settings()
    found = registry.model_version(settings, version)
    figures = gate_checks.figures_of(gate_checks.load_summary(settings, found.run_id))
    done = registry.promote(settings, version, reason=reason, actor=actor, figures=figures)
    _echo({**done, "server": ro.sync_stable(settings),
           # kmeans_publish republishes the segments on this event, as after the DAGs' moves
           "publication": emit_champion_moved(settings, {"operation": "promotion",
                                                         "champion": version,
                                                         "reason": reason, "via": "cli"})})


@app.command(cls=_Command)
@options_from(RollbackParams)
def rollback(
    actor: Annotated[str | None, typer.Option(help="Who (default: your user name).")] = None, *,
    params: RollbackParams,
):
    """Make previous (or --to-version) champion again; a pending challenger is kept unless
    --drop-challenger. Refused if another promotion or rollback is in progress."""
    settings = _settings()
    done = registry.rollback(settings, reason=params.reason, to_version=params.to_version,
                             actor=actor, drop_challenger=params.drop_challenger)
    _echo({**done, "server": ro.sync_stable(settings),
           "publication": emit_champion_moved(settings, {"operation": "rollback",
                                                         "champion": done["champion"],
                                                         "reason": params.reason,
                                                         "via": "cli"})})


@app.command(cls=_Command)
def rollout(
    version: Annotated[str | None, typer.Argument(
        help="Version to roll out (default: the one behind 'challenger').")] = None,
    resume: Annotated[bool, typer.Option(
        help="Finish an interrupted rollout instead of starting one.")] = False,
    steps: Annotated[str | None, typer.Option(
        help="Steps, e.g. 'shadow,10,50,100' (KMEANS_ROLLOUT_STEPS).")] = None,
    interval: Annotated[float | None, typer.Option(
        min=0.1, help="Analysis interval in seconds (KMEANS_ROLLOUT_INTERVAL_SECONDS).")] = None,
):
    """Roll a version out through the steps, analysing each against the champion; promote it,
    or roll it back at the first failed step."""
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
    _echo(registry.read_audit(_settings()))


@app.command(cls=_Command)
def blocks(
    clean: Annotated[bool, typer.Option(
        "--clean", help="Remove what the retention policy says has expired.")] = False,
    retention_hours: Annotated[float, typer.Option(
        min=0, help="Keys unused for longer than this are expired.")] = 72.0,
    stage_dir: Annotated[Path | None, typer.Option(
        help="Stage dir to look at (default: KMEANS_STAGE_DIR, or this machine's executor "
             "dir when that is 'executor').")] = None,
):
    """Show the staged blocks (key, blocks, bytes, temporary files, hours idle); with --clean,
    remove expired keys and the temporary files of dead task attempts."""
    root = stage_dir or Path(load_settings().block_stage_dir or executor_stage_root())
    removed = clean_stage(root, retention_hours=retention_hours, dry_run=not clean)
    _echo({"stage_dir": str(root), "keys": stage_usage(root),
           "removed" if clean else "would_remove": removed})


@app.command(cls=_Command)
@options_from(IntervalParams)
def monitor(*, params: IntervalParams):
    """Compute one monitoring window of the prediction log (what kmeans_monitoring runs each
    hour): figures, report, index, MLflow run and Prometheus file; no action is taken. Without
    --start/--end: the last whole hour, as the hourly run would."""
    if params.start is not None and params.end is not None:
        start, end = params.start, params.end
    else:
        end = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
        start = end - dt.timedelta(hours=1)
    figures = monitor_window(_settings(), start, end)
    _echo({k: v for k, v in figures.items() if k != "clusters"})


@app.command("publish-segments", cls=_Command)
@options_from(PublishParams)
def publish_segments_command(*, params: PublishParams):
    """Score every customer's latest features with the champion (a Spark job) and publish the
    customer_segment feature view: offline table and online store."""
    _echo(publish_segments(_settings(), version=params.version))


@app.command("monitor-exporter", cls=_Command)
def monitor_exporter(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port.")] = 9108,
):
    """Serve the latest monitoring window's figures at /metrics for Prometheus."""
    server = make_exporter(prometheus_path(_settings()), host, port)
    print(f"serving http://{host}:{server.server_address[1]}/metrics", file=sys.stderr,
          flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


@app.command(cls=_Command)
@options_from(ServeParams)
def serve(*, params: ServeParams):
    """Serve the model behind an alias (Open Inference Protocol v2 and KServe v1)."""
    run_server(_settings(**params.setting_overrides()), alias=params.alias,
               version=params.version, canary_alias=params.canary_alias or None,
               canary_mode=params.canary_mode, canary_weight=params.canary_weight,
               with_feast=params.feast)


@app.command(cls=_Command)
def demo(
    customers: Annotated[int, typer.Option(min=100, help="Number of customers.")] = 20_000,
    days: Annotated[int, typer.Option(min=1, help="Days of data.")] = 7,
    seed: Annotated[int, typer.Option(help="Seed of the data.")] = 7,
):
    """Sample data, the training DAG end to end, the model served, example predictions."""
    run_demo(_settings(), customers=customers, days=days, seed=seed)


@app.command(cls=_Command)
def consume(
    max_events: Annotated[int | None, typer.Option(
        min=1, help="Stop after this many events; default: until SIGTERM or Ctrl-C.")] = None,
    seconds: Annotated[float | None, typer.Option(
        min=0, help="Stop after this many seconds.")] = None,
):
    """Consume the event stream (KMEANS_STREAM_URL): validated events to the offline table and
    the online store, bad ones to quarantine, acknowledged after both writes; each fresh event's
    segment (the champion's) pushed to the customer_segment view; the shadow model fed."""
    settings = _settings()
    _echo(stream.consume(settings, max_events=max_events, seconds=seconds,
                         **flow.consumer_hooks(settings)))


@app.command("ingest-sql", cls=_Command)
def ingest_sql(
    url: Annotated[str | None, typer.Option(
        help="postgresql://user@host:port/db (a password is best given by PGPASSWORD or "
             "~/.pgpass); default: KMEANS_SQL_URL.")] = None,
    table: Annotated[str | None, typer.Option(
        help="Table (schema.table) or a SELECT query; default: KMEANS_SQL_TABLE.")] = None,
    watermark: Annotated[str | None, typer.Option(
        help="Timestamp column the rows are read by; default: KMEANS_SQL_WATERMARK.")] = None,
    start: Annotated[str | None, typer.Option(help="Interval start, ISO 8601 (UTC if naive); "
                                                   "with --incremental: the first run's.")] = None,
    end: Annotated[str | None, typer.Option(help="Interval end (excluded), ISO 8601.")] = None,
    incremental: Annotated[bool, typer.Option(
        "--incremental", help="Land [stored watermark, now - lag) and store now - lag.")] = False,
    lag_seconds: Annotated[float, typer.Option(
        min=0, help="How late a row may commit after its watermark value.")] = 300.0,
    source: Annotated[str | None, typer.Option(
        help="Source name (a-z, 0-9, _); default: KMEANS_SQL_SOURCE, else from the table "
             "name.")] = None,
):
    """Land a PostgreSQL table or query in the offline feature table, by watermark interval
    (the source of the kmeans_ingest_sql DAG unless the options name another)."""
    settings = _settings()
    url = url or (settings.sql.sql_url.get_secret_value() if settings.sql.sql_url else None)
    table, watermark = table or settings.sql.sql_table, watermark or settings.sql.sql_watermark
    missing = [f"--{name} (or KMEANS_SQL_{name.upper()})"
               for name, value in (("url", url), ("table", table), ("watermark", watermark))
               if not value]
    if missing:
        raise ValueError(f"no SQL source: give {', '.join(missing)}")
    assert url is not None and table is not None and watermark is not None  # for mypy
    _echo(postgres.ingest_sql(settings, url=url, table=table, watermark=watermark,
                              start=start, end=end, incremental=incremental,
                              lag_seconds=lag_seconds, source=source or settings.sql.sql_source))


def _utc(value: dt.datetime) -> dt.datetime:
    """A day typed on the command line (naive) is a UTC day."""
    return value.replace(tzinfo=dt.UTC)


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    main()
