"""The alias lock: one per registered model, so two alias moves never interleave.

A PostgreSQL advisory lock when MLflow's store is PostgreSQL, otherwise an fcntl lock on a
file beside the SQLite store; the one refused learns who holds it, doing what, since when.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from pipeline.core.io import (
    LockBusy,
    file_lock,
    utc_now_iso,
)
from pipeline.core.settings import Settings
from pipeline.registry.client import sqlite_store


class AliasMoveInProgress(RuntimeError):
    """Another promotion, rollback or registration holds the alias lock of the model."""



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



