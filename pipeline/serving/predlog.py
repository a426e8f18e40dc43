"""The prediction log: what the server saw and what it answered, written off the request path
into the lake as Parquet, one folder per hour.

The event loop only appends a sampled request's arrays to a bounded queue (a few
microseconds); a writer thread turns the queue into Parquet files (temporary name, then
rename) under ``<dir>/hour=YYYY-MM-DDTHH/``. When the queue is full the record is dropped and
counted, never waited for; a failed write is counted and logged, and the server goes on. The
monitoring DAG reads one hour folder per window.

Columns: ``time`` (UTC, microseconds), ``request_id``, ``model_version``, ``customer_id``
(null for vectors), ``cluster``, ``distance``, ``margin``, ``ood``, then one float64 column per
feature in the model's order (NaN where a value was missing). Rows that failed (unknown ids)
are not logged.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prometheus_client import Counter, Gauge

from pipeline.core.predictions import hour_folder

log = logging.getLogger("pipeline.serving.predlog")

@dataclass(slots=True)
class _Entry:
    time_us: int
    request_id: str
    features: np.ndarray  # (n, d) float64
    customer_id: np.ndarray | None
    cluster: np.ndarray
    distance: np.ndarray
    margin: np.ndarray
    ood: np.ndarray
    model_version: list[str]


class PredictionLog:
    """Sampled predictions, queued in memory (at most ``max_queue_rows``) and written by a
    thread every ``flush_seconds`` (or sooner, once ``flush_rows`` are waiting).

    Examples
    --------
    >>> plog = PredictionLog("/tmp/predictions", ["a", "b"], sample_rate=0.1)  # doctest: +SKIP
    >>> plog.start(); ...; plog.close()  # doctest: +SKIP
    """

    def __init__(self, directory: str | Path, feature_names: list[str], *,
                 sample_rate: float = 1.0, max_queue_rows: int = 200_000,
                 flush_rows: int = 20_000, flush_seconds: float = 5.0):
        if not 0 <= sample_rate <= 1:
            raise ValueError(f"sample_rate={sample_rate!r} should be within [0, 1]")
        if max_queue_rows < 1 or flush_rows < 1 or not flush_seconds > 0:
            raise ValueError("max_queue_rows and flush_rows should be >= 1 and flush_seconds > 0")
        self.directory = Path(directory)
        self.feature_names = list(feature_names)
        self.sample_rate = sample_rate
        self.max_queue_rows = max_queue_rows
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._queue: deque[_Entry] = deque()
        self._queued_rows = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._random = random.Random()
        # Registered by the server in its own registry (served at /metrics).
        self.rows = Counter("kmeans_prediction_log_rows_total",
                            "Prediction log rows by outcome (written, dropped: queue full or "
                            "write failed)", ["outcome"], registry=None)
        self.files = Counter("kmeans_prediction_log_files_total",
                             "Parquet files the prediction log wrote", registry=None)
        self.queued = Gauge("kmeans_prediction_log_queued_rows",
                            "Rows waiting to be written", registry=None)
        self.collectors = (self.rows, self.files, self.queued)
        self.queued.set_function(lambda: self._queued_rows)
        self._written = self.rows.labels("written")
        self._dropped = self.rows.labels("dropped")

    # ---- the request path ----------------------------------------------------------------
    def record(self, request_id: str, features: np.ndarray | None, pred, ok: np.ndarray,
               customer_ids: list[int] | None = None) -> None:
        """Queue a request's scored rows (``ok``), if sampled; never blocks, never raises."""
        if self.sample_rate < 1 and self._random.random() >= self.sample_rate:
            return
        if features is None:
            return
        try:
            keep = np.flatnonzero(ok)
            n = len(keep)
            if n == 0:
                return
            if self._queued_rows + n > self.max_queue_rows:
                self._dropped.inc(n)
                return
            every = n == len(pred)
            pick = slice(None) if every else keep
            versions = pred.model_version if every else [pred.model_version[i] for i in keep]
            entry = _Entry(
                time_us=time.time_ns() // 1000, request_id=request_id,
                features=np.asarray(features, dtype=np.float64)[pick],
                customer_id=(None if customer_ids is None
                             else np.asarray(customer_ids, dtype=np.int64)[pick]),
                cluster=np.asarray(pred.cluster)[pick], distance=np.asarray(pred.distance)[pick],
                margin=np.asarray(pred.margin)[pick], ood=np.asarray(pred.ood)[pick],
                model_version=list(versions))
            with self._lock:
                self._queue.append(entry)
                self._queued_rows += n
            if self._queued_rows >= self.flush_rows:
                self._wake.set()
        except Exception:  # the log must never fail a request
            log.exception("prediction log: a record was lost")
            self._dropped.inc()

    # ---- the writer thread ---------------------------------------------------------------
    def start(self) -> PredictionLog:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="prediction-log",
                                            daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued and stop the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()

    def flush(self) -> int:
        """Write every queued entry now (one file per hour they fall in); the rows written."""
        with self._lock:
            entries = list(self._queue)
            self._queue.clear()
            self._queued_rows = 0
        if not entries:
            return 0
        n = sum(len(e.cluster) for e in entries)
        try:
            table = self._table(entries)
            hours = np.repeat([e.time_us // 3_600_000_000 for e in entries],
                              [len(e.cluster) for e in entries])
            for hour in np.unique(hours):
                part = table.filter(pa.array(hours == hour))
                folder = hour_folder(self.directory,
                                     datetime.fromtimestamp(int(hour) * 3600, UTC))
                folder.mkdir(parents=True, exist_ok=True)
                name = f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
                tmp = folder / f".{name}.tmp"
                pq.write_table(part, tmp)
                os.replace(tmp, folder / name)
                self.files.inc()
        except Exception:
            log.exception("prediction log: %d rows could not be written", n)
            self._dropped.inc(n)
            return 0
        self._written.inc(n)
        return n

    def _table(self, entries: list[_Entry]) -> pa.Table:
        sizes = [len(e.cluster) for e in entries]
        features = np.concatenate([e.features for e in entries])
        columns = {
            "time": pa.array(np.repeat([e.time_us for e in entries], sizes),
                             pa.timestamp("us", tz="UTC")),
            "request_id": pa.array(np.repeat([e.request_id for e in entries], sizes)),
            "model_version": pa.array([v for e in entries for v in e.model_version]),
            "customer_id": pa.array(np.concatenate([
                e.customer_id if e.customer_id is not None else np.full(len(e.cluster), -1)
                for e in entries]), pa.int64(),
                mask=np.concatenate([np.full(len(e.cluster), e.customer_id is None)
                                     for e in entries])),
            "cluster": pa.array(np.concatenate([e.cluster for e in entries]), pa.int32()),
            "distance": pa.array(np.concatenate([e.distance for e in entries]), pa.float64()),
            "margin": pa.array(np.concatenate([e.margin for e in entries]), pa.float64()),
            "ood": pa.array(np.concatenate([e.ood for e in entries]), pa.bool_()),
        }
        for j, name in enumerate(self.feature_names):
            columns[name] = pa.array(features[:, j], pa.float64())
        return pa.table(columns)
