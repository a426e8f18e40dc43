"""MLflow tracking and model registry: runs, models-from-code versions, aliases, audit trail.

Aliases: ``challenger`` (registered, waiting), ``champion`` (served), ``previous`` (the champion
before the last promotion, what a rollback returns to). Every move goes through
:func:`register_challenger`, :func:`promote`, :func:`rollback` or :func:`reject_challenger`,
under the model's alias lock, and is appended to the audit trail (``home/audit/aliases.jsonl``,
``kmeans audit``).
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from pipeline.core.io import (
    PRIVATE_FILE_MODE,
    LockBusy,
    append_line,
    file_lock,
    make_private,
    private_dir,
    read_json_lines,
    utc_now_iso,
)
from pipeline.core.settings import Settings
from pipeline.model import kmeans_segments
from pipeline.model.artifact import SegmentModel

log = logging.getLogger(__name__)

MODEL_CODE = Path(__file__).parent / "model" / "pyfunc.py"
#: Logged beside MODEL_CODE and imported by it under its top-level name: all the model needs.
MODEL_MODULE = Path(kmeans_segments.__file__)
#: What the logged model needs to run: nothing from this project.
MODEL_REQUIREMENTS = ("mlflow", "numpy", "pandas")
ARTIFACT_PATH = "segment_model"
INPUT_EXAMPLE_ROWS = 3
ALIASES = ("champion", "challenger", "previous")


def configure(settings: Settings) -> str:
    """Point MLflow at this deployment's store and make sure the experiment exists.

    The embedded default's SQLite store and local artifact folder are owner-only (0600 and
    0700): they hold every run's parameters, metrics, tags and model files.
    """
    import mlflow

    db = sqlite_store(settings)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        with suppress(FileExistsError):
            # An empty file is an empty SQLite database: MLflow creates its tables in it, and
            # the store is owner-only from its first byte (SQLite gives its journal the same
            # mode).
            os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    exp = mlflow.get_experiment_by_name(settings.mlflow_experiment)
    if db is not None:
        make_private(db)  # a store created by an earlier version, or by MLflow itself
    if settings.profile == "local" and settings.artifact_root.exists():
        make_private(settings.artifact_root)
    if exp is None:
        location = None
        if settings.profile == "local":
            location = private_dir(settings.artifact_root).as_uri()
        return mlflow.create_experiment(settings.mlflow_experiment, artifact_location=location)
    return exp.experiment_id


def monitoring_experiment_name(settings: Settings) -> str:
    """The MLflow experiment of the monitoring windows: ``<experiment>-monitoring``."""
    return f"{settings.mlflow_experiment}-monitoring"


def monitoring_artifact_root(settings: Settings) -> Path | None:
    """Where the monitoring runs' artifacts go in the embedded default:
    ``<home>/mlartifacts/monitoring`` (beside the training runs', owner-only); None in the
    production profile, whose MLflow server keeps the artifacts where it keeps the others."""
    return settings.artifact_root / "monitoring" if settings.profile == "local" else None


def monitoring_experiment(settings: Settings) -> str:
    """The id of the monitoring experiment, created with its artifact location under the home
    (:func:`monitoring_artifact_root`) when it is missing.

    An experiment created without a location (as every version before this one did) has
    MLflow's default, ``<cwd of the process that created it>/mlruns/<id>``: outside the home,
    and MLflow cannot move an experiment's location. Such an experiment is renamed
    ``<name>-misplaced-<id>`` (its runs and figures stay readable there, the windows' JSON
    keep their run ids) and a new one is created in the right place, with a warning naming
    both: no new run writes to the old location.
    """
    from mlflow.exceptions import MlflowException

    c = client(settings)  # configure(): the store exists and MLflow points at it
    name = monitoring_experiment_name(settings)
    root = monitoring_artifact_root(settings)
    last: Exception | None = None
    for _ in range(3):  # another process may be creating or renaming it at the same time
        exp = c.get_experiment_by_name(name)
        if exp is not None and (root is None or _is_under(exp.artifact_location, root)):
            return exp.experiment_id
        try:
            if exp is not None:
                aside = f"{name}-misplaced-{exp.experiment_id}"
                c.rename_experiment(exp.experiment_id, aside)
                log.warning("MLflow experiment %r (id %s) keeps its artifacts at %s, outside "
                            "%s: renamed %r; the monitoring runs go to a new experiment %r",
                            name, exp.experiment_id, exp.artifact_location, root, aside, name)
            location = None if root is None else private_dir(root).as_uri()
            return c.create_experiment(name, artifact_location=location)
        except MlflowException as err:
            last = err
    raise RuntimeError(f"could not create the MLflow experiment {name!r}: {last}")


def _is_under(location: str | None, root: Path) -> bool:
    """Whether an experiment's artifact location (a local path or ``file:`` URI) lies in
    ``root``."""
    if not location:
        return False
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme not in ("", "file"):
        return False
    path = Path(urllib.request.url2pathname(parsed.path if parsed.scheme else location))
    return path.resolve().is_relative_to(root.resolve())


def sqlite_store(settings: Settings) -> Path | None:
    """The file of the MLflow store when it is SQLite (the embedded default), else None."""
    uri = settings.mlflow_tracking_uri
    if not uri.startswith("sqlite:///"):
        return None
    name = uri.removeprefix("sqlite:///").split("?", 1)[0]  # without ?timeout=... options
    return None if name in ("", ":memory:") else Path(name)


def client(settings: Settings):
    from mlflow import MlflowClient

    configure(settings)
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri,
                        registry_uri=settings.mlflow_tracking_uri)


def alias_version(settings: Settings, alias: str):
    """The model version behind ``alias``, or None if the alias (or the model) does not exist.

    Any other registry error propagates: treating an outage as "no champion" would promote an
    unchecked model.
    """
    from mlflow.exceptions import MlflowException

    try:
        return client(settings).get_model_version_by_alias(settings.model_name, alias)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or (
                err.error_code == "INVALID_PARAMETER_VALUE" and "not found" in str(err)):
            return None
        raise


def log_model_version(settings: Settings, run_id: str, artifact_dir: Path, tags: dict) -> str:
    """Log the artifact folder as a models-from-code pyfunc in ``run_id`` and register it.

    The logged model stands alone: the model code, :mod:`pipeline.model.kmeans_segments`
    (``code_paths``) and requirements pinned to the installed MLflow, NumPy and pandas; with a
    signature (every feature an optional double column) and an input example.
    """
    import mlflow

    model = SegmentModel.load(artifact_dir)  # refuses a modified artifact before logging it
    configure(settings)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
        # MLflow keeps the folder's own name inside the model; give it the one loaders expect.
        staged = shutil.copytree(artifact_dir, Path(tmp) / ARTIFACT_PATH)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            code_paths=[str(MODEL_MODULE)],
            artifacts={ARTIFACT_PATH: str(staged)},
            registered_model_name=settings.model_name,
            signature=model_signature(model.feature_names),
            input_example=input_example(model),
            pip_requirements=pinned_requirements(),
        )
    _make_local_tree_private(mlflow.get_logged_model(info.model_id).artifact_location)
    version = str(info.registered_model_version)
    c = client(settings)
    for key, value in tags.items():
        c.set_model_version_tag(settings.model_name, version, key, str(value))
    return version


def _make_local_tree_private(uri: str | None) -> None:
    """Owner-only modes on a logged model's files when they are in a local folder (MLflow
    copies artifacts without their modes, so they get the umask's)."""
    if not uri or not uri.startswith("file:"):
        return
    root = Path(urllib.request.url2pathname(urllib.parse.urlparse(uri).path))
    for folder, _, names in os.walk(root):
        make_private(folder)
        for name in names:
            make_private(Path(folder) / name)


def model_signature(feature_names: list[str]):
    """Input: each feature a double column, optional (absent or NaN = missing, imputed).
    Output: ``cluster`` and ``runner_up`` (long), ``distance`` and ``margin`` (double),
    ``ood`` (boolean)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    types = {"cluster": "long", "distance": "double", "runner_up": "long", "margin": "double",
             "ood": "boolean"}
    if set(types) != set(kmeans_segments.OUTPUTS):
        raise RuntimeError(f"signature outputs {sorted(types)} differ from the model's "
                           f"{sorted(kmeans_segments.OUTPUTS)}")
    return ModelSignature(
        inputs=Schema([ColSpec("double", name, required=False) for name in feature_names]),
        outputs=Schema([ColSpec(types[name], name) for name in kmeans_segments.OUTPUTS]))


def input_example(model: SegmentModel, rows: int = INPUT_EXAMPLE_ROWS) -> pd.DataFrame:
    """A few raw rows that land on the model's first centroids, rounded for reading."""
    raw = model.preprocessor.inverse_transform(model.centroids[:rows])
    return pd.DataFrame(np.round(raw, 4), columns=model.feature_names)


def pinned_requirements() -> list[str]:
    """``name==version`` of the installed MLflow, NumPy and pandas: the logged model's whole
    environment."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in MODEL_REQUIREMENTS]


def current_aliases(settings: Settings) -> dict[str, str | None]:
    """The version behind each alias (None where the alias is not set)."""
    return {alias: _alias_number(settings, alias) for alias in ALIASES}


# ---------------------------------------------------------------- alias moves
#
# Every alias move happens under one lock per registered model, so two promotions (or a
# promotion and a rollback) cannot interleave and leave the aliases half-moved. Promote and
# rollback take it without waiting: the loser is refused, naming who holds it. Within a move
# the order keeps every version reachable: `previous` is written before `champion` moves.


class AliasMoveInProgress(RuntimeError):
    """Another promotion, rollback or registration holds the alias lock of the model."""


def register_challenger(settings: Settings, version: str, *, reason: str,
                        actor: str | None = None, figures: dict | None = None) -> list[str]:
    """``challenger`` <- ``version``; the model's first version also becomes ``champion``.

    Waits up to ``settings.alias_lock_wait_seconds`` for a promotion in progress. Returns the
    aliases set.
    """
    version, actor = str(version), actor or _actor()
    with alias_lock(settings, operation="registration", version=version, actor=actor,
                    wait=settings.alias_lock_wait_seconds):
        moves = [_move_alias(settings, "challenger", version, operation="registration",
                             reason=reason, actor=actor, figures=figures)]
        if _alias_number(settings, "champion") is None:
            moves.append(_move_alias(
                settings, "champion", version, operation="registration", actor=actor,
                reason="first version of the model: no champion to compare with",
                figures=figures))
    return [m["alias"] for m in moves]


def promote(settings: Settings, version: str, *, reason: str, actor: str | None = None,
            figures: dict | None = None) -> dict:
    """``previous`` <- the old champion, ``champion`` <- ``version``; ``challenger`` is removed
    if it pointed at ``version``. Refused at once if another alias move is in progress."""
    version, actor = str(version), actor or _actor()
    _require_reason(reason, "promotion")
    with alias_lock(settings, operation="promotion", version=version, actor=actor):
        model_version(settings, version)
        old = _alias_number(settings, "champion")
        if old == version:
            raise ValueError(f"version {version} is already the champion of "
                             f"{settings.model_name!r}; nothing to promote")
        common: dict[str, Any] = {"operation": "promotion", "reason": reason, "actor": actor,
                                  "figures": figures}
        moves = []
        if old is not None:
            moves.append(_move_alias(settings, "previous", old, **common))
        moves.append(_move_alias(settings, "champion", version, **common))
        if _alias_number(settings, "challenger") == version:
            moves.append(_move_alias(settings, "challenger", None, **common))
    return {"model": settings.model_name, "operation": "promotion", "champion": version,
            "previous": old, "moves": moves}


def reject_challenger(settings: Settings, version: str, *, reason: str,
                      actor: str | None = None, figures: dict | None = None) -> dict:
    """A rollout of ``version`` failed: ``challenger`` is removed if it points at ``version``,
    and the version is tagged ``rollout_rejected_at`` / ``rollout_reject_reason`` so nobody
    rolls it out again by accident. The champion is untouched."""
    version, actor = str(version), actor or _actor()
    _require_reason(reason, "rejection")
    with alias_lock(settings, operation="rejection", version=version, actor=actor,
                    wait=settings.alias_lock_wait_seconds):
        model_version(settings, version)
        moves = []
        if _alias_number(settings, "challenger") == version:
            moves.append(_move_alias(settings, "challenger", None, operation="rejection",
                                     reason=reason, actor=actor, figures=figures))
        c = client(settings)
        c.set_model_version_tag(settings.model_name, version, "rollout_rejected_at",
                                utc_now_iso())
        c.set_model_version_tag(settings.model_name, version, "rollout_reject_reason",
                                reason[:5000])
    return {"model": settings.model_name, "operation": "rejection", "version": version,
            "champion": _alias_number(settings, "champion"), "moves": moves}


def rollback(settings: Settings, *, reason: str, actor: str | None = None,
             to_version: str | None = None, figures: dict | None = None,
             drop_challenger: bool = False) -> dict:
    """``champion`` <- ``previous`` (or ``to_version``); a pending ``challenger`` is kept.

    ``previous`` is never pointed at the version rolled back from: that version is known bad
    and must not be one rollback away. So a plain rollback consumes ``previous`` (removed, its
    version is the champion now) and a second rollback is refused until a promotion sets it
    again; a rollback to an explicit ``to_version`` leaves ``previous`` as it was. The version
    rolled back from gets the tags ``rolled_back_at`` and ``rollback_reason``.

    A ``challenger`` waiting for its rollout (registered, perhaps approved by a person at a
    drift review) stays, unless ``drop_challenger`` asks for its removal, or it is the version
    rolled back from (known bad) or the one rolled back to (champion now). The result says
    which, in ``challenger`` and in one ``summary`` line.
    """
    actor = actor or _actor()
    to_version = None if to_version in (None, "") else str(to_version)
    _require_reason(reason, "rollback")
    with alias_lock(settings, operation="rollback", version=to_version, actor=actor):
        bad = _alias_number(settings, "champion")
        if bad is None:
            raise LookupError(f"model {settings.model_name!r} has no champion; nothing to roll "
                              f"back")
        previous = _alias_number(settings, "previous")
        target = to_version or previous
        if target is None:
            raise LookupError(f"model {settings.model_name!r} has no 'previous' alias to roll "
                              f"back to (champion is version {bad}); name a version with "
                              f"to_version")
        if target == bad:
            raise ValueError(f"version {target} is already the champion; nothing to roll back")
        model_version(settings, target)
        common: dict[str, Any] = {"operation": "rollback", "reason": reason, "actor": actor,
                                  "figures": figures}
        moves = [_move_alias(settings, "champion", target, **common)]
        if previous == target:
            moves.append(_move_alias(settings, "previous", None, **common))
        challenger = _alias_number(settings, "challenger")
        why = _challenger_goes(challenger, bad=bad, target=target, drop=drop_challenger)
        if challenger is not None and why:
            moves.append(_move_alias(settings, "challenger", None, **common))
        c = client(settings)
        c.set_model_version_tag(settings.model_name, bad, "rolled_back_at", moves[0]["at"])
        c.set_model_version_tag(settings.model_name, bad, "rollback_reason", reason)
    if challenger is None:
        pending = {"version": None, "kept": False, "why": "there was no challenger"}
    else:
        pending = {"version": challenger, "kept": not why,
                   "why": why or "a pending challenger is kept (drop_challenger to remove it)"}
    summary = f"champion {bad} -> {target}; " + (
        "no challenger" if challenger is None else
        f"challenger {challenger} {'kept' if pending['kept'] else 'removed'}: {pending['why']}")
    return {"model": settings.model_name, "operation": "rollback", "champion": target,
            "rolled_back_from": bad, "challenger": pending, "summary": summary, "moves": moves}


def _challenger_goes(challenger: str | None, *, bad: str, target: str, drop: bool) -> str:
    """Why a rollback removes the challenger ("" when it stays)."""
    if challenger is None:
        return ""
    if drop:
        return "removed as asked (drop_challenger)"
    if challenger == bad:
        return f"it is version {bad}, the one rolled back from"
    if challenger == target:
        return f"it is version {target}, the champion now"
    return ""


def _move_alias(settings: Settings, alias: str, version: str | None, *, operation: str,
                reason: str, actor: str, figures: dict | None) -> dict:
    """Point ``alias`` at ``version`` (None: remove it) and append the move to the audit trail.
    The caller holds the alias lock."""
    if alias not in ALIASES:
        raise ValueError(f"alias={alias!r} should be one of {ALIASES}")
    c = client(settings)
    before = _alias_number(settings, alias)
    if version is None:
        c.delete_registered_model_alias(settings.model_name, alias)
    else:
        c.set_registered_model_alias(settings.model_name, alias, str(version))
    entry = {
        "at": utc_now_iso(), "model": settings.model_name, "alias": alias,
        "operation": operation, "from_version": before,
        "to_version": None if version is None else str(version),
        "actor": actor, "reason": reason, "figures": figures or {},
    }
    # Owner-only: the trail names who moved which model and why, with the gates' figures.
    private_dir(audit_path(settings).parent)
    append_line(audit_path(settings), json.dumps(entry, sort_keys=True, default=str))
    log.info("alias %s: %s -> %s (%s: %s)", alias, before, entry["to_version"], operation, reason)
    return entry


def _alias_number(settings: Settings, alias: str) -> str | None:
    found = alias_version(settings, alias)
    return None if found is None else str(found.version)


def model_version(settings: Settings, version: str):
    """The registered version ``version`` of the model; LookupError if there is none."""
    from mlflow.exceptions import MlflowException

    try:
        return client(settings).get_model_version(settings.model_name, str(version))
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            raise LookupError(f"model {settings.model_name!r} has no version {version!r}") from err
        raise


def _require_reason(reason: str, operation: str) -> None:
    if not (reason or "").strip():
        raise ValueError(f"a {operation} needs a reason (it goes to the audit trail)")


# ---------------------------------------------------------------- the alias lock


@contextmanager
def alias_lock(settings: Settings, *, operation: str, version: str | None, actor: str,
               wait: float = 0.0):
    """Hold the model's alias lock for one operation, or raise :class:`AliasMoveInProgress`.

    A PostgreSQL advisory lock when the MLflow store is PostgreSQL (every host sharing the
    store sees it); otherwise an fcntl lock on a file beside the SQLite store (or under
    ``home/locks`` for a remote store). ``wait`` seconds of retrying before giving up; 0 means
    one try.
    """
    holder = {"operation": operation, "version": version, "actor": actor,
              "since": utc_now_iso(), "host": socket.gethostname(), "pid": os.getpid()}
    lock = (_PostgresLock(settings.mlflow_tracking_uri, settings.model_name)
            if _is_postgres(settings.mlflow_tracking_uri) else _FileLock(lock_path(settings)))
    if not lock.acquire(holder, wait):
        raise AliasMoveInProgress(f"{_describe(operation, version)} refused: "
                                  f"{_describe_holder(lock.holder())}; no alias was moved, "
                                  f"try again when it has finished")
    try:
        yield holder
    finally:
        lock.release()


def lock_path(settings: Settings) -> Path:
    """The lock file of the embedded default: beside the SQLite store, so every home that
    shares the store shares the lock."""
    db = sqlite_store(settings)
    if db is not None:
        return db.with_name(f"{db.name}.{settings.model_name}.aliases.lock")
    return settings.home / "locks" / f"{settings.model_name}.aliases.lock"


def _describe(operation: str, version: str | None) -> str:
    if version is None:
        return operation
    return f"{operation} {'to' if operation == 'rollback' else 'of'} version {version}"


def _describe_holder(holder: dict | None) -> str:
    if not holder:
        return "another promotion, rollback or registration is in progress (holder unknown)"
    return (f"a {_describe(holder.get('operation', 'alias move'), holder.get('version'))} by "
            f"{holder.get('actor', 'unknown')} is in progress since {holder.get('since', '?')}")


class _FileLock:
    """:func:`pipeline.core.io.file_lock`, with the holder written in the lock file for the
    one who is refused."""

    def __init__(self, path: Path):
        self.path = path
        self._held = ExitStack()

    def acquire(self, holder: dict, wait: float) -> bool:
        try:
            fh = self._held.enter_context(file_lock(self.path, wait=wait))
        except LockBusy:
            return False
        _rewrite(fh, json.dumps(holder))
        self._held.callback(_rewrite, fh, "")  # cleared before the lock is released
        return True

    def holder(self) -> dict | None:
        # The winner writes its name right after taking the lock: give it a moment.
        for _ in range(20):
            try:
                return json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                time.sleep(0.025)
        return None

    def release(self) -> None:
        self._held.close()


def _rewrite(fh: Any, text: str) -> None:
    fh.seek(0)
    fh.truncate()
    fh.write(text)
    fh.flush()


class _PostgresLock:
    """A session-level advisory lock on the MLflow store's own database; released by the
    database if the holder dies. The holder names itself in its connection's
    application_name (PostgreSQL keeps 63 bytes of it: a long actor is cut)."""

    def __init__(self, url: str, model_name: str):
        self.url = url
        self.key = int.from_bytes(hashlib.sha256(f"kmeans-aliases:{model_name}".encode())
                                  .digest()[:4], "big") & 0x7FFFFFFF
        self._conn: sa.Connection | None = None

    def _connect(self) -> sa.Connection:
        try:
            return sa.create_engine(self.url, poolclass=NullPool).connect()
        except ModuleNotFoundError as err:
            raise RuntimeError(f"the MLflow store is PostgreSQL ({self.url.split('@')[-1]}) but "
                               f"no PostgreSQL driver is installed: {err}") from err

    def acquire(self, holder: dict, wait: float) -> bool:
        conn = self._connect()
        deadline = time.monotonic() + wait
        while not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"),
                               {"k": self.key}).scalar():
            if time.monotonic() >= deadline:
                conn.close()
                return False
            time.sleep(0.1)
        since = int(dt.datetime.fromisoformat(holder["since"]).timestamp())
        tag = f"kmeans|{holder['operation']}|{holder['version'] or ''}|{since}|{holder['actor']}"
        conn.execute(sa.text("SELECT set_config('application_name', :tag, false)"),
                     {"tag": tag})
        conn.commit()
        self._conn = conn
        return True

    def holder(self) -> dict | None:
        with self._connect() as conn:
            tag = conn.execute(sa.text(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a "
                "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.classid = 0 AND l.objid = :k"), {"k": self.key}).scalar()
        parts = (tag or "").split("|", 4)
        if len(parts) != 5 or parts[0] != "kmeans":
            return None
        since = dt.datetime.fromtimestamp(int(parts[3]), dt.UTC).isoformat()
        return {"operation": parts[1], "version": parts[2] or None, "since": since,
                "actor": parts[4]}

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            raise RuntimeError("release() of an advisory lock that is not held")
        conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
        conn.close()


def _is_postgres(uri: str) -> bool:
    return uri.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def audit_path(settings: Settings) -> Path:
    return settings.home / "audit" / "aliases.jsonl"


def read_audit(settings: Settings) -> list[dict]:
    return read_json_lines(audit_path(settings))


def download_model(settings: Settings, alias: str = "champion", *, version: str | None = None):
    """Download and verify the artifact of ``version`` (default: the one behind ``alias``);
    returns (SegmentModel, version)."""
    import mlflow

    if version is None:
        found = alias_version(settings, alias)
        if found is None:
            raise LookupError(f"model {settings.model_name!r} has no alias {alias!r}; "
                              f"run the training DAG or `kmeans train` first")
        version = str(found.version)
    else:
        version = str(model_version(settings, version).version)  # LookupError if unknown
    configure(settings)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{settings.model_name}/{version}")
    folder = Path(local) / "artifacts" / ARTIFACT_PATH
    return SegmentModel.load(folder), str(version)


class ChampionFollower:
    """The current champion for a long-running process (the stream consumer's segmenter and
    shadow model): ``()`` returns ``(model, version)``, or None while there is no champion. The
    alias is looked up at most every ``refresh_seconds`` (default
    ``KMEANS_STREAM_MODEL_REFRESH_SECONDS``) and the model downloaded only when it moved."""

    def __init__(self, settings: Settings, *, refresh_seconds: float | None = None):
        self.settings = settings
        self.refresh_seconds = (settings.stream_model_refresh_seconds
                                if refresh_seconds is None else refresh_seconds)
        self._cached: tuple[SegmentModel, str] | None = None
        self._checked = -float("inf")

    def __call__(self) -> tuple[SegmentModel, str] | None:
        if time.monotonic() - self._checked < self.refresh_seconds:
            return self._cached
        return self.refresh()

    def refresh(self) -> tuple[SegmentModel, str] | None:
        """Look the alias up now, whenever it was last looked up (a caller that has seen a
        sign of a newer champion, e.g. another consumer's shadow state)."""
        self._checked = time.monotonic()
        found = alias_version(self.settings, "champion")
        if found is None:
            if self._cached is not None:
                log.warning("model %r has no champion any more", self.settings.model_name)
            self._cached = None
        elif self._cached is None or self._cached[1] != str(found.version):
            self._cached = download_model(self.settings, version=str(found.version))
            log.info("following champion version %s of %r", self._cached[1],
                     self.settings.model_name)
        return self._cached


def _actor() -> str:
    return os.environ.get("AIRFLOW_CTX_DAG_RUN_ID") or getpass.getuser()
