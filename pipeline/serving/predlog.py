"""The prediction log: what the server saw and what it answered, written off the request path
into the lake as Parquet, one folder per hour.

The event loop only copies a sampled request's rows into preallocated columns (a few
microseconds, no allocation per row); a writer thread turns the columns into Parquet files
(temporary name, then rename) under ``<dir>/hour=YYYY-MM-DDTHH/``, every ``flush_seconds``.
When the columns are full, rows are dropped and counted, never waited for; a failed write is
counted and logged, and the server goes on. The monitoring DAG reads one hour folder per window.

Columns: ``time`` (UTC, microseconds), ``request_id``, ``model_version``, ``customer_id``
(null for vectors), ``cluster``, ``distance``, ``margin``, ``ood``, then one float64 column per
feature in the model's order (NaN where a value was missing). Rows that failed (unknown ids)
are not logged.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prometheus_client import Counter, Gauge

from pipeline.core.predictions import hour_folder

log = logging.getLogger("pipeline.serving.predlog")

#: The columns Parquet dictionary-encodes: the few-valued ones. By default every column is
#: tried, and on the features, distances and ids (nearly all values distinct) the attempt cost
#: 0.8 us a row and made the file bigger: 0.99 -> 0.17 us a row, 7.5 -> 6.0 MiB for 50,000
#: rows, measured here; the values read back the same.
DICTIONARY_COLUMNS = ["model_version", "cluster"]


class _Columns:
    """Preallocated columns of up to ``capacity`` rows: a request's rows are copied in with a
    few slice assignments, and the writer turns the filled part into a table without a loop."""

    def __init__(self, capacity: int, width: int):
        self.n = 0
        self.time_us = np.empty(capacity, np.int64)
        self.request_id = np.empty(capacity, object)
        self.model_version = np.empty(capacity, object)
        self.customer_id = np.empty(capacity, np.int64)
        self.has_id = np.empty(capacity, bool)
        self.cluster = np.empty(capacity, np.int32)
        self.distance = np.empty(capacity, np.float64)
        self.margin = np.empty(capacity, np.float64)
        self.ood = np.empty(capacity, bool)
        self.features = np.empty((capacity, width), np.float64)

    @property
    def capacity(self) -> int:
        return len(self.time_us)


class PredictionLog:
    """Sampled predictions, copied into preallocated columns in memory (at most
    ``max_queue_rows``) and written by a thread every ``flush_seconds`` (or sooner, once half
    the columns are full). Two sets of columns take turns: the request path fills one while
    the thread writes the other.

    Examples
    --------
    >>> plog = PredictionLog("/tmp/predictions", ["a", "b"], sample_rate=0.1)  # doctest: +SKIP
    >>> plog.start(); ...; plog.close()  # doctest: +SKIP
    """

    def __init__(self, directory: str | Path, feature_names: list[str], *,
                 sample_rate: float = 1.0, max_queue_rows: int = 100_000,
                 flush_seconds: float = 10.0):
        if max_queue_rows < 1 or not flush_seconds > 0:
            raise ValueError("max_queue_rows should be >= 1 and flush_seconds > 0")
        self.directory = Path(directory)
        self.feature_names = list(feature_names)
        self._random = random.Random()
        self.sample_rate = sample_rate  # sets the first skip (see the property)
        self.flush_seconds = flush_seconds
        width = len(self.feature_names)
        self._filling = _Columns(max_queue_rows, width)
        self._spare = _Columns(max_queue_rows, width)
        self._swap = threading.Lock()  # held for a few slice assignments, or for a swap
        self._write = threading.Lock()  # one writer at a time (the thread, or close())
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Registered by the server in its own registry (served at /metrics).
        self.rows = Counter("kmeans_prediction_log_rows_total",
                            "Prediction log rows by outcome (written, dropped: queue full or "
                            "write failed)", ["outcome"], registry=None)
        self.files = Counter("kmeans_prediction_log_files_total",
                             "Parquet files the prediction log wrote", registry=None)
        self.queued = Gauge("kmeans_prediction_log_queued_rows",
                            "Rows waiting to be written", registry=None)
        self.collectors = (self.rows, self.files, self.queued)
        self.queued.set_function(lambda: self._filling.n)
        self._written = self.rows.labels("written")
        self._dropped = self.rows.labels("dropped")

    @property
    def sample_rate(self) -> float:
        """The share of requests logged. Each request is logged with this chance, independently
        of the others; drawn as the number of requests to skip before the next logged one
        (geometric), so that a request that is not logged costs one decrement, not a random
        draw."""
        return self._rate

    @sample_rate.setter
    def sample_rate(self, rate: float) -> None:
        if not 0 <= rate <= 1:
            raise ValueError(f"sample_rate={rate!r} should be within [0, 1]")
        self._rate = rate
        self._skip = self._draw_skip()

    def _draw_skip(self) -> int:
        """Requests to skip before the next logged one: P(skip = s) = (1 - r)^s r, the
        waiting time of a request logged with chance r."""
        rate = self._rate
        if rate >= 1:
            return 0
        if rate <= 0:
            return sys.maxsize
        u = 1.0 - self._random.random()  # in (0, 1]
        return int(math.log(u) / math.log1p(-rate))

    @property
    def max_queue_rows(self) -> int:
        return self._filling.capacity

    # ---- the request path ----------------------------------------------------------------
    def record(self, request_id: str, features, pred, ok: np.ndarray | None,
               customer_ids: list[int] | None = None) -> None:
        """Copy a request's scored rows (``ok``; None: all) into the columns, if sampled;
        never waits for a write, never raises."""
        if self._skip:
            self._skip -= 1
            return
        if self._rate < 1:
            self._skip = self._draw_skip()
        if features is None:
            return
        try:
            rows = None if ok is None or ok.all() else np.flatnonzero(ok)
            n = len(pred) if rows is None else len(rows)
            if n == 0:
                return
            now = time.time_ns() // 1000
            with self._swap:
                cols = self._filling
                i, j = cols.n, cols.n + n
                if j > cols.capacity:
                    self._dropped.inc(n)
                    return
                if n == 1 and rows is None:  # one row: item assignments, a third the cost
                    cols.features[i] = features[0]
                    cols.cluster[i] = pred.cluster[0]
                    cols.distance[i] = pred.distance[0]
                    cols.margin[i] = pred.margin[0]
                    cols.ood[i] = pred.ood[0]
                    cols.model_version[i] = pred.model_version[0]
                    if customer_ids is not None:
                        cols.customer_id[i] = customer_ids[0]
                    cols.has_id[i] = customer_ids is not None
                    cols.time_us[i] = now
                    cols.request_id[i] = request_id
                    cols.n = j
                elif rows is None:
                    cols.features[i:j] = features
                    cols.cluster[i:j] = pred.cluster
                    cols.distance[i:j] = pred.distance
                    cols.margin[i:j] = pred.margin
                    cols.ood[i:j] = pred.ood
                    cols.model_version[i:j] = pred.model_version
                    if customer_ids is not None:
                        cols.customer_id[i:j] = customer_ids
                else:
                    cols.features[i:j] = np.asarray(features, dtype=np.float64)[rows]
                    cols.cluster[i:j] = pred.cluster[rows]
                    cols.distance[i:j] = pred.distance[rows]
                    cols.margin[i:j] = pred.margin[rows]
                    cols.ood[i:j] = pred.ood[rows]
                    cols.model_version[i:j] = [pred.model_version[r] for r in rows]
                    if customer_ids is not None:
                        cols.customer_id[i:j] = np.asarray(customer_ids, np.int64)[rows]
                if n > 1 or rows is not None:
                    cols.has_id[i:j] = customer_ids is not None
                    cols.time_us[i:j] = now
                    cols.request_id[i:j] = request_id
                    cols.n = j
            if j * 2 >= cols.capacity:
                self._wake.set()
        except Exception:  # the log must never fail a request
            log.exception("prediction log: a record was lost")
            self._dropped.inc()

    # ---- the writer thread ---------------------------------------------------------------
    def start(self) -> PredictionLog:
        """Start the writer thread, once the write path is warm (:meth:`_warm`)."""
        if self._thread is None:
            self._warm()
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
        """Write every row recorded so far now (one file per hour they fall in); the rows
        written."""
        with self._write:
            with self._swap:
                cols, self._filling, self._spare = self._filling, self._spare, self._filling
            n = cols.n
            if n == 0:
                return 0
            try:
                table = self._table(cols, n)
                hours = cols.time_us[:n] // 3_600_000_000
                single = hours.min() == hours.max()  # one hour: nothing to split
                for hour in hours[:1] if single else np.unique(hours):
                    part = table if single else table.filter(pa.array(hours == hour))
                    folder = hour_folder(self.directory,
                                         datetime.fromtimestamp(int(hour) * 3600, UTC))
                    folder.mkdir(parents=True, exist_ok=True)
                    name = f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
                    tmp = folder / f".{name}.tmp"
                    pq.write_table(part, tmp, use_dictionary=DICTIONARY_COLUMNS)
                    os.replace(tmp, folder / name)
                    self.files.inc()
            except Exception:
                log.exception("prediction log: %d rows could not be written", n)
                self._dropped.inc(n)
                return 0
            finally:
                cols.request_id[:n] = None  # let the strings go
                cols.model_version[:n] = None
                cols.n = 0
            self._written.inc(n)
            return n

    def _warm(self) -> None:
        """Write one row's table to memory, as a flush would write its file. The first
        flush pays for pyarrow's lazy set-up (compute kernels, the Parquet writer, time
        zones): 0.36 s, 48 ms of it holding the GIL, measured here, which stalled every request
        in flight (p99 at 2,000 req/s went from about 1.5 ms to 4-11 ms in the window that held
        the first flush). Paid here, before the server takes traffic."""
        cols = _Columns(1, len(self.feature_names))
        cols.time_us[0], cols.request_id[0], cols.model_version[0] = 0, "warm", "0"
        cols.customer_id[0], cols.has_id[0], cols.cluster[0] = 0, False, 0
        cols.distance[0] = cols.margin[0] = 0.0
        cols.ood[0] = False
        cols.features[0] = 0.0
        table = self._table(cols, 1)
        hours = cols.time_us[:1] // 3_600_000_000
        pq.write_table(table.filter(pa.array(hours == hours[0])), pa.BufferOutputStream(),
                       use_dictionary=DICTIONARY_COLUMNS)

    def _table(self, cols: _Columns, n: int) -> pa.Table:
        columns = {
            "time": pa.array(cols.time_us[:n], pa.timestamp("us", tz="UTC")),
            "request_id": pa.array(cols.request_id[:n], pa.string()),
            "model_version": pa.array(cols.model_version[:n], pa.string()),
            "customer_id": pa.array(cols.customer_id[:n], pa.int64(), mask=~cols.has_id[:n]),
            "cluster": pa.array(cols.cluster[:n]),
            "distance": pa.array(cols.distance[:n]),
            "margin": pa.array(cols.margin[:n]),
            "ood": pa.array(cols.ood[:n]),
        }
        for j, name in enumerate(self.feature_names):
            columns[name] = pa.array(cols.features[:n, j])
        return pa.table(columns)
