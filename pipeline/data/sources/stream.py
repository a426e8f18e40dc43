"""The event stream: customer events land in the offline feature table and the Feast online store.

Each event is a JSON object: ``event_id`` (unique, the producer's), ``customer_id``,
``event_timestamp`` (ISO 8601 text, e.g. ``2030-01-31T06:00:00Z``; naive means UTC; no epoch
numbers, no "now" or "today"; from ``Settings.ingest_earliest_event`` on), the twelve features of
:data:`~pipeline.core.settings.FEATURE_NAMES` (numbers or null) and optionally
``created_timestamp`` (the same format). :func:`publish` writes them.

Transports, behind one interface (:class:`EventStream`):

- :class:`RedisStream`, the embedded default and what the tests exercise: a Redis stream read
  through a consumer group (``XREADGROUP``; the group is created, with the stream, when missing).
  A consumer first re-reads its own unacknowledged entries (id ``0``), then claims those of
  consumers idle longer than ``stream_claim_idle_seconds`` (``XAUTOCLAIM``: taken for dead),
  then reads new ones (``>``).
- :class:`KafkaStream`, for the production profile, through ``confluent-kafka`` (imported only
  when one is built). **Not exercised**: no Kafka broker runs where this was written and tested;
  only its construction without the library is. Offsets are committed after the writes, so it
  gives the same at-least-once delivery; a dead consumer's partitions move by Kafka's own
  rebalancing.

:class:`Consumer` processes one batch at a time:

1. Parse each message; one that is not a JSON object, or whose fields have the wrong JSON types,
   is quarantined with the reason. Reading one entry never raises (:func:`parse_event`): JSON
   nested past the recursion limit, a number beyond a float, a timestamp near pandas' limits,
   or any other error while reading it is that entry's reason (with the exception's type), so
   one "poison pill" never stops the batch, nor every consumer that reads it after.
2. Drop redeliveries: an event whose ``event_id`` already landed (with the same content) is not
   written to the offline table again (it is pushed again: harmless, see 5). One that landed with
   other content is quarantined ("event_id ... already landed with other values").
3. Validate with :func:`pipeline.data.ingest.split_valid`, the ingest rules, per event day
   (:func:`validate_rows`): should that raise, the rows that raise on their own are quarantined
   with the error and the others validated again.
4. Under a file lock: record every event in the event index (a SQLite file under
   ``<home>/stream/``: event id -> the file that holds it, ``offline/<path>`` for a file of the
   offline table's folder, local or ``KMEANS_OFFLINE_URI``), then write the accepted events of each
   day as one Parquet file of the offline table (``customer_profile/day=<day>/stream-<hash>
   .parquet``, the hash of its event ids, same columns as ingest's files) and the rejected ones to
   the quarantine (``<home>/rejected/stream/customer_profile/received=<day>/batch-<hash>
   .parquet``, with the raw payload and ``reject_reason``). An event counts as landed when its
   index row names a file that exists: a crash between the two steps leaves events that are
   written again on redelivery, to whatever file their new batch makes, and never twice.
5. Push each customer's latest accepted event to the online store through the push source
   ``customer_profile_push``. Online writes are upserts keyed by customer; the index keeps the
   latest (event time, creation time) pushed per customer, so a redelivered older event never
   overwrites a newer one (Feast's SQLite store would).
   With a segmenter (``kmeans consume`` passes
   :class:`~pipeline.promotion.publish.ChampionSegmenter`), the same rows are assigned with the
   champion, the version the inference server serves as stable, and each customer's new segment
   is pushed through ``customer_segment_push`` to the ``customer_segment`` view: readable from
   the online store within a second or two of the event (benchmarks/bench_stream.py; the
   correctness of it in tests/integration/redis/test_sources_stream.py).
6. Only then acknowledge the batch (``XACK``; Kafka: commit the offsets), once its counts add up
   (:meth:`BatchResult.check`: read = landed + duplicates + repeated + rejected). A crash
   anywhere before leaves the batch unacknowledged: it is delivered again (at-least-once) and
   steps 2 and 4 make that idempotent.
7. Hand the batch's accepted rows to the observers (the shadow model,
   :mod:`pipeline.monitoring.shadow`). An observer that fails is logged; it never stops the
   consumer, and a crash before this step means an observer may see a batch twice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import math
import re
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import redis

from pipeline.core.io import (
    PRIVATE_FILE_MODE,
    StorePath,
    file_lock,
    private_dir,
    utc_now,
)
from pipeline.core.settings import FEATURE_NAMES, Settings
from pipeline.data import features
from pipeline.data.ingest import (
    FUTURE_TOLERANCE,
    OFFLINE_TABLE,
    RowsUnaccounted,
    check_rows_accounted,
    split_valid,
)

log = logging.getLogger(__name__)

#: The Feast push source the consumer pushes to (feature_repo/data_sources.py).
PUSH_SOURCE = "customer_profile_push"
#: The push source of the customer_segment view (feature_repo/segments.py).
SEGMENT_PUSH_SOURCE = "customer_segment_push"
#: The field of a Redis stream entry that holds the event's JSON.
EVENT_FIELD = "event"
#: Folder of ``rejected_dir`` that keeps the quarantined events.
QUARANTINE_FOLDER = "stream"
#: Event index entries of offline-table files start with this (``offline/customer_profile/...``).
OFFLINE_KEY = "offline"
#: Seconds a consumer waits for the lock of the offline table's stream writes.
LOCK_WAIT_SECONDS = 600.0

QUARANTINE_SCHEMA = pa.schema([
    ("message_id", pa.string()), ("event_id", pa.string()), ("payload", pa.string()),
    ("reject_reason", pa.string()), ("received_at", pa.timestamp("us", tz="UTC")),
])


# ---------------------------------------------------------------- transports


@dataclass(frozen=True)
class Message:
    """One stream entry: its transport id (what is acknowledged) and its raw payload (None when
    the entry carries no event field, or was deleted from the stream before it was read)."""

    id: str
    payload: bytes | None


class Segmenter(Protocol):
    """Assigns fresh feature rows (customer_id, event_timestamp, the features) to segments: the
    ``customer_segment`` rows to push, or None when there is no model to assign with."""

    def __call__(self, rows: pd.DataFrame) -> pd.DataFrame | None: ...


class EventStream(Protocol):
    """What the consumer needs of a transport: read a batch, acknowledge it, count what is out."""

    def read(self, max_events: int, block_ms: int) -> list[Message]:
        """Up to ``max_events`` messages: this consumer's unacknowledged ones first, then ones
        of dead consumers, then new ones (waiting up to ``block_ms`` for them)."""
        ...

    def ack(self, ids: Sequence[str]) -> None:
        """Acknowledge processed messages: they are not delivered again."""
        ...

    def pending(self) -> int:
        """Messages delivered to the group and not acknowledged yet."""
        ...

    def close(self) -> None: ...


class RedisStream:
    """A Redis stream read through a consumer group (created with the stream when missing)."""

    def __init__(self, url: str, stream: str, group: str, consumer: str, *,
                 claim_idle_ms: int = 60_000, client: redis.Redis | None = None):
        self.client = client if client is not None else redis.Redis.from_url(url)
        self.stream, self.group, self.consumer = stream, group, consumer
        self.claim_idle_ms = claim_idle_ms
        self._own_backlog = True  # re-read our own unacknowledged entries before new ones
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        try:
            self.client.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise

    def read(self, max_events: int, block_ms: int) -> list[Message]:
        if self._own_backlog:
            got = self._entries(self.client.xreadgroup(
                self.group, self.consumer, {self.stream: "0"}, count=max_events))
            if got:
                return got
            self._own_backlog = False
        claimed = self._claim(max_events)
        if claimed:
            return claimed
        return self._entries(self.client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=max_events,
            block=max(block_ms, 1)))

    def _claim(self, max_events: int) -> list[Message]:
        """Entries of consumers idle longer than the claim timeout, now this consumer's."""
        now = time.monotonic()
        if now < self._next_claim:
            return []
        reply: Any = self.client.xautoclaim(self.stream, self.group, self.consumer,
                                            min_idle_time=self.claim_idle_ms,
                                            start_id=self._claim_cursor, count=max_events)
        cursor, entries = reply[0], reply[1]
        self._claim_cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        if self._claim_cursor == "0-0":  # a full pass: look again after a while
            self._next_claim = now + min(self.claim_idle_ms / 1000 / 2, 5.0)
        got = [self._message(i, f) for i, f in entries]
        if got:
            log.warning("claimed %d events idle over %d ms from other consumers of %s/%s",
                        len(got), self.claim_idle_ms, self.stream, self.group)
        return got

    def _entries(self, reply) -> list[Message]:
        if not reply:
            return []
        return [self._message(i, f) for i, f in reply[0][1]]

    @staticmethod
    def _message(entry_id, fields) -> Message:
        key = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        payload = None
        if fields:
            payload = fields.get(EVENT_FIELD.encode(), fields.get(EVENT_FIELD))
            if isinstance(payload, str):
                payload = payload.encode()
        return Message(key, payload)

    def ack(self, ids: Sequence[str]) -> None:
        if ids:
            self.client.xack(self.stream, self.group, *ids)

    def pending(self) -> int:
        summary: Any = self.client.xpending(self.stream, self.group)
        return int(summary["pending"])

    def close(self) -> None:
        self.client.close()


class KafkaStream:
    """A Kafka topic read by a consumer group through ``confluent-kafka``.

    NOT EXERCISED: no Kafka broker was available where this was written; the tests check only
    that building one without ``confluent-kafka`` installed fails with a clear message. Design:
    auto-commit is off and :meth:`ack` commits, synchronously, the offset after the highest
    acknowledged message of each partition, so offsets move only after the consumer's writes
    (at-least-once; the consumer acknowledges whole batches in order). A dead consumer's
    partitions are reassigned by the group's rebalancing and re-read from the last commit.
    """

    def __init__(self, servers: str, topic: str, group: str, *,
                 config: dict[str, Any] | None = None):
        try:
            import confluent_kafka
        except ImportError as err:
            raise RuntimeError(
                "the Kafka stream needs confluent-kafka, which is not installed: pip install "
                "confluent-kafka (or use a redis:// KMEANS_STREAM_URL)") from err
        self._kafka = confluent_kafka
        self.topic = topic
        self._consumer = confluent_kafka.Consumer({
            "bootstrap.servers": servers, "group.id": group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest", **(config or {})})
        self._consumer.subscribe([topic])
        self._out: dict[str, tuple[int, int]] = {}  # message id -> (partition, offset)

    def read(self, max_events: int, block_ms: int) -> list[Message]:
        got = []
        for msg in self._consumer.consume(num_messages=max_events, timeout=block_ms / 1000):
            error = msg.error()
            if error is not None:
                if error.code() == self._kafka.KafkaError._PARTITION_EOF:
                    continue
                raise self._kafka.KafkaException(error)
            key = f"{msg.topic()}:{msg.partition()}:{msg.offset()}"
            self._out[key] = (msg.partition(), msg.offset())
            got.append(Message(key, msg.value()))
        return got

    def ack(self, ids: Sequence[str]) -> None:
        highest: dict[int, int] = {}
        for key in ids:
            partition, offset = self._out.pop(key)
            highest[partition] = max(highest.get(partition, -1), offset)
        if highest:
            self._consumer.commit(offsets=[
                self._kafka.TopicPartition(self.topic, p, o + 1) for p, o in highest.items()],
                asynchronous=False)

    def pending(self) -> int:
        return len(self._out)

    def close(self) -> None:
        self._consumer.close()


def consumer_name(settings: Settings) -> str:
    return settings.stream.stream_consumer or f"consumer-{socket.gethostname()}"


def open_stream(settings: Settings) -> EventStream:
    """The transport ``settings.stream.stream_url`` names (redis:// or kafka://)."""
    stream = settings.stream
    url = stream.stream_url
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss", "unix"):
        return RedisStream(url, stream.stream_name, stream.stream_group,
                           consumer_name(settings),
                           claim_idle_ms=int(stream.stream_claim_idle_seconds * 1000))
    if scheme == "kafka":
        return KafkaStream(url.split("://", 1)[1], stream.stream_name, stream.stream_group)
    raise ValueError(f"KMEANS_STREAM_URL {url!r}: expected redis://host:port/db or "
                     "kafka://host:port")


def publish(client: redis.Redis, stream: str, events: Iterable[dict[str, Any] | str | bytes],
            *, chunk: int = 1000) -> list[str]:
    """Append events (dicts as JSON; text and bytes as they are) to a Redis stream; their ids."""
    ids: list[str] = []
    batch = list(events)
    for start in range(0, len(batch), chunk):
        pipe = client.pipeline(transaction=False)
        for event in batch[start:start + chunk]:
            body = event if isinstance(event, str | bytes) else json.dumps(event)
            pipe.xadd(stream, {EVENT_FIELD: body})
        ids.extend(i.decode() if isinstance(i, bytes) else str(i) for i in pipe.execute())
    return ids


# ---------------------------------------------------------------- the event index


class EventIndex:
    """Which events landed where, and the latest row pushed online per customer (SQLite)."""

    def __init__(self, path: Path):
        private_dir(path.parent)
        self.path = path
        self.db = sqlite3.connect(path, timeout=60, isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # durable across a crash of the process
        self.db.executescript("""
            CREATE TABLE IF NOT EXISTS events (
                key TEXT PRIMARY KEY, file TEXT NOT NULL, digest TEXT NOT NULL,
                landed INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS latest (
                customer_id INTEGER PRIMARY KEY, event_us INTEGER NOT NULL,
                created_us INTEGER NOT NULL);
        """)
        path.chmod(PRIVATE_FILE_MODE)

    def lookup(self, keys: Sequence[str]) -> dict[str, tuple[str, str, bool]]:
        """key -> (file, digest, landed) for the keys the index has."""
        found = {}
        for start in range(0, len(keys), 5000):
            part = keys[start:start + 5000]
            rows = self.db.execute(
                f"SELECT key, file, digest, landed FROM events WHERE key IN "
                f"({','.join('?' * len(part))})", part)
            found.update({k: (f, d, bool(a)) for k, f, d, a in rows})
        return found

    def record(self, rows: Iterable[tuple[str, str, str, bool]]) -> None:
        with self._transaction():
            self.db.executemany(
                "INSERT INTO events (key, file, digest, landed) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET file=excluded.file, digest=excluded.digest, "
                "landed=excluded.landed", rows)

    def latest(self, customer_ids: Sequence[int]) -> dict[int, tuple[int, int]]:
        found = {}
        for start in range(0, len(customer_ids), 5000):
            part = [int(c) for c in customer_ids[start:start + 5000]]
            rows = self.db.execute(
                f"SELECT customer_id, event_us, created_us FROM latest WHERE customer_id IN "
                f"({','.join('?' * len(part))})", part)
            found.update({c: (e, k) for c, e, k in rows})
        return found

    def set_latest(self, rows: Iterable[tuple[int, int, int]]) -> None:
        with self._transaction():
            self.db.executemany(
                "INSERT INTO latest (customer_id, event_us, created_us) VALUES (?, ?, ?) "
                "ON CONFLICT(customer_id) DO UPDATE SET event_us=excluded.event_us, "
                "created_us=excluded.created_us", rows)

    def landed_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM events WHERE landed").fetchone()[0])

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


def stream_dir(settings: Settings) -> Path:
    """The consumer's own state: the event index and the lock of its writes."""
    return settings.home / "stream"


# ---------------------------------------------------------------- parsing


class StreamInvariantError(RuntimeError):
    """The consumer's accounting does not add up (a bug): raised before the batch is
    acknowledged, so it is delivered again and nothing is lost silently."""


@dataclass
class BatchResult:
    """What one batch (or a run of batches) did; ``read`` = ``landed`` + ``duplicates`` +
    ``rejected`` + ``repeated`` (:meth:`check`)."""

    read: int = 0
    landed: int = 0            # new events written to the offline table
    duplicates: int = 0        # events that had already landed (redelivered): not written again
    repeated: int = 0          # an event id twice in one batch: the first copy counts
    rejected: int = 0          # quarantined, with the reason
    pushed: int = 0            # customer rows written to the online store
    segments: int = 0          # customer segments assigned and pushed online
    batches: int = 0
    seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, other: BatchResult) -> None:
        for name in ("read", "landed", "duplicates", "repeated", "rejected", "pushed",
                     "segments", "batches"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.seconds += other.seconds
        for text, count in other.reasons.items():
            self.reasons[text] = self.reasons.get(text, 0) + count

    def check(self) -> None:
        """Raise :class:`StreamInvariantError` unless every message read has one outcome (read
        = landed + duplicates + repeated + rejected) and each rejected one its reason."""
        outcomes = self.landed + self.duplicates + self.repeated + self.rejected
        if outcomes != self.read or sum(self.reasons.values()) != self.rejected:
            raise StreamInvariantError(
                f"read {self.read} != landed {self.landed} + duplicates {self.duplicates} + "
                f"repeated {self.repeated} + rejected {self.rejected}, or the reasons count "
                f"{sum(self.reasons.values())} rejected")

    def to_dict(self) -> dict:
        return asdict(self)


_ID_REASON = "customer_id missing or not a positive integer"
_TS_REASON = "event_timestamp missing or not a timestamp"
#: Longest reason text kept (an exception's message, an event id quoted in a reason).
REASON_CHARS = 300

#: The timestamps an event may carry: ISO 8601 text (RFC 3339's space for ``T`` allowed), a
#: date, optionally a time to the nanosecond, optionally ``Z`` or an offset. Nothing else:
#: pandas' own parser also takes "now", "today" or "Jan 5", which would land an event at the
#: moment it was read, or at a guess.
ISO_8601 = re.compile(
    r"\d{4}-\d{2}-\d{2}"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)?", re.ASCII)
#: How far past the clock a time may be before reading stops at it: the ingest rules then
#: judge what is left (the future beyond :data:`~pipeline.data.ingest.FUTURE_TOLERANCE`, a
#: creation time up to its event's day end) with the same reasons.
FUTURE_HORIZON = FUTURE_TOLERANCE + pd.Timedelta(days=1)
#: The earliest event day when the caller gives none: the setting's default.
_EARLIEST: dt.date = Settings.model_fields["ingest_earliest_event"].default


def _clip(text: str, limit: int = REASON_CHARS) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _error(err: BaseException) -> str:
    """An exception as a reason's detail: its type and its message, clipped."""
    return _clip(f"{type(err).__name__}: {err}", REASON_CHARS // 2)


def _timestamp(value: Any) -> pd.Timestamp | None:
    """An ISO 8601 timestamp (naive means UTC) in UTC, or None for anything else."""
    if not isinstance(value, str) or not ISO_8601.fullmatch(value):
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError):  # out of pandas' range, 25:00, +99:00
        return None
    if ts is pd.NaT:
        return None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _out_of_range(name: str, ts: pd.Timestamp, first: pd.Timestamp,
                  horizon: pd.Timestamp) -> str:
    """The reason a time is before the earliest event day (``Settings.ingest_earliest_event``:
    sentinel dates such as 1900-01-01, pandas' lower limit) or far in the future (near pandas'
    upper limit), as ingest words them; "" inside."""
    if ts < first:
        return f"{name} before ingest_earliest_event={first.date().isoformat()}"
    if ts > horizon:
        return f"{name} in the future"
    return ""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_text(value: str) -> bool:
    """UTF-8 encodable (JSON's ``\\ud800`` is a lone surrogate: SQLite and Parquet refuse it)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_event(payload: bytes | None, *, now: dt.datetime | None = None,
                earliest: dt.date | None = None,
                ) -> tuple[dict[str, Any] | None, str | None, str]:
    """``(row for split_valid, event_id, "")`` of a payload, or ``(None, event_id or None,
    reason)`` when it is not an event (reasons as ingest's where ingest has the same rule).

    ``earliest`` (default: the ``ingest_earliest_event`` setting's default) is the first day an
    event or creation time may be on; a time more than :data:`FUTURE_HORIZON` past ``now``
    (default: the clock) is in the future.

    Never raises: any error while reading one entry (JSON nested past the recursion limit, a
    number beyond a float, a bug) is that entry's reason, with the exception's type, so one
    entry never stops the batch (the "poison pill" that crashed every consumer that read it).
    """
    seen: dict[str, str] = {}
    try:
        first = pd.Timestamp(earliest or _EARLIEST, tz="UTC")
        horizon = pd.Timestamp(now if now is not None else utc_now())
        horizon = (horizon if horizon.tzinfo else horizon.tz_localize("UTC")) + FUTURE_HORIZON
        return _parse_event(payload, seen, first, horizon)
    except Exception as err:  # any error is this entry's, never the batch's
        return None, seen.get("event_id"), f"event could not be read ({_error(err)})"


def _parse_event(payload: bytes | None, seen: dict[str, str], first: pd.Timestamp,
                 horizon: pd.Timestamp) -> tuple[dict[str, Any] | None, str | None, str]:
    if payload is None:
        return None, None, "stream entry has no event (no 'event' field, or it was deleted)"
    try:
        event = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        # RecursionError: arrays or objects nested past the interpreter's recursion limit.
        return None, None, f"event is not valid JSON ({_error(err)})"
    if not isinstance(event, dict):
        return None, None, f"event is a JSON {type(event).__name__}, expected an object"
    event_id = event.get("event_id")
    if not isinstance(event_id, str | int) or isinstance(event_id, bool) or event_id == "":
        return None, None, "event_id missing or not a string"
    event_id = str(event_id)
    if not _is_text(event_id):
        return None, None, "event_id is not valid Unicode text (a lone surrogate)"
    seen["event_id"] = event_id
    cid = event.get("customer_id")
    if not isinstance(cid, int) or isinstance(cid, bool) or not 0 < cid < 2**63:
        return None, event_id, _ID_REASON
    ts = _timestamp(event.get("event_timestamp"))
    if ts is None:
        return None, event_id, _TS_REASON
    if reason := _out_of_range("event_timestamp", ts, first, horizon):
        return None, event_id, reason
    row: dict[str, Any] = {"customer_id": cid, "event_timestamp": ts}
    for name in FEATURE_NAMES:
        value = event.get(name)
        if value is not None and not _is_number(value):
            return None, event_id, f"{name} is not numeric"
        try:
            row[name] = math.nan if value is None else float(value)
        except OverflowError as err:  # an integer of hundreds of digits
            return None, event_id, f"{name} is not finite ({_error(err)})"
    created = event.get("created_timestamp")
    if created is not None:
        created_ts = _timestamp(created)
        if created_ts is None:
            return None, event_id, "created_timestamp is not a timestamp"
        if reason := _out_of_range("created_timestamp", created_ts, first, horizon):
            return None, event_id, reason
        row["created_timestamp"] = created_ts
    else:
        row["created_timestamp"] = pd.NaT
    return row, event_id, ""


def _digest(payload: bytes | None) -> str:
    return hashlib.sha256(payload or b"").hexdigest()[:32]


def _name_hash(keys: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:24]


def _us(ts: pd.Timestamp) -> int:
    return int(ts.value // 1000)


# ---------------------------------------------------------------- the consumer


class Consumer:
    """Reads batches of events and lands them: offline table, online store, quarantine; then
    acknowledges them. See the module's description for the steps and their guarantees."""

    def __init__(self, settings: Settings, stream: EventStream, *, store=None,
                 segmenter: Segmenter | None = None,
                 observers: Sequence[Callable[[pd.DataFrame], None]] = ()):
        self.settings = settings
        self.stream = stream
        self.segmenter = segmenter
        self.observers = tuple(observers)
        self.store = store if store is not None else features.feature_store(settings)
        self.index = EventIndex(stream_dir(settings) / f"{OFFLINE_TABLE}-events.sqlite")
        self.lock_path = stream_dir(settings) / f"{OFFLINE_TABLE}.lock"
        self.table_dir = settings.offline_root / OFFLINE_TABLE
        self.quarantine_dir = StorePath.at(settings.rejected_dir / QUARANTINE_FOLDER
                                           / OFFLINE_TABLE)

    def close(self) -> None:
        self.index.close()
        self.stream.close()

    def run_once(self, max_events: int | None = None, block_ms: int = 500) -> BatchResult:
        """Read one batch (waiting up to ``block_ms`` for it) and process it."""
        messages = self.stream.read(max_events or self.settings.stream.stream_batch_size, block_ms)
        if not messages:
            return BatchResult()
        return self.process(messages)

    def run(self, stop: threading.Event | None = None, *, max_events: int | None = None,
            seconds: float | None = None, block_ms: int = 500) -> BatchResult:
        """Process batches until ``stop`` is set, ``max_events`` were read or ``seconds``
        passed."""
        stop = stop or threading.Event()
        total = BatchResult()
        deadline = None if seconds is None else time.monotonic() + seconds
        while not stop.is_set():
            wait = block_ms
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                wait = max(1, min(block_ms, int(left * 1000)))
            limit = self.settings.stream.stream_batch_size
            if max_events is not None:
                if total.read >= max_events:
                    break
                limit = min(limit, max_events - total.read)
            total.add(self.run_once(limit, wait))
        return total

    def _indexed(self, entry: str) -> StorePath:
        """The file an event index entry names: ``offline/<path in the offline table's
        folder>`` (local or an object store), else a path under the home (the quarantine)."""
        head, _, rest = entry.partition("/")
        if head == OFFLINE_KEY:
            return self.settings.offline_root / rest
        return StorePath.at(self.settings.home / entry)

    # -------------------------------------------------------- one batch

    def process(self, messages: Sequence[Message]) -> BatchResult:
        started = time.perf_counter()
        now = utc_now()
        result = BatchResult(read=len(messages), batches=1)
        earliest = self.settings.ingest_earliest_event
        parsed = [(msg, *parse_event(msg.payload, now=now, earliest=earliest),
                   _digest(msg.payload)) for msg in messages]
        with file_lock(self.lock_path, wait=LOCK_WAIT_SECONDS):
            known = self.index.lookup([
                *(f"message:{msg.id}" for msg, *_ in parsed),
                *(str(key) for _, row, key, _, _ in parsed if row is not None)])
            exists: dict[str, bool] = {}

            def done(key: str, landed: bool) -> bool:
                """The key is in the index, landed (or quarantined), and its file exists."""
                entry = known.get(key)
                if entry is None or entry[2] != landed:
                    return False
                if entry[0] not in exists:
                    exists[entry[0]] = self._indexed(entry[0]).exists()
                return exists[entry[0]]

            rows: list[dict[str, Any]] = []
            meta: list[tuple[Message, str, str, bool]] = []  # message, event id, digest, landed
            bad: list[tuple[Message, str | None, str]] = []  # message, event id, reason
            seen: dict[str, str] = {}
            for msg, row, event_id, reason, digest in parsed:
                if done(f"message:{msg.id}", landed=False):
                    result.duplicates += 1  # quarantined before; redelivered
                elif row is None:
                    bad.append((msg, event_id, reason))
                elif event_id in seen:
                    if seen[event_id] == digest:
                        result.repeated += 1
                    else:
                        bad.append((msg, event_id, f"event_id {_clip(str(event_id), 100)} repeated "
                                                   "in the batch with other values"))
                elif done(str(event_id), landed=True) and known[str(event_id)][1] != digest:
                    bad.append((msg, event_id, f"event_id {_clip(str(event_id), 100)} already "
                                               "landed with other values"))
                else:
                    seen[str(event_id)] = digest
                    rows.append(row)
                    meta.append((msg, str(event_id), digest, done(str(event_id), landed=True)))
            accepted, rejected = validate_rows(rows, now, earliest=earliest)
            for j in rejected.index:  # split_valid keeps the row positions as its index
                msg, key, _, landed = meta[j]
                bad.append((msg, key, str(rejected.at[j, "reject_reason"])))
            again = np.array([m[3] for m in meta], dtype=bool)
            new = accepted.loc[~again[accepted.index]]
            result.duplicates += int(again[accepted.index].sum())
            self._land(new, [meta[j][1:3] for j in new.index], bad, now)
            result.landed = len(new)
            result.rejected = len(bad)
            for *_, reason in bad:
                result.reasons[reason] = result.reasons.get(reason, 0) + 1
            result.pushed, result.segments = self._push(accepted)
        result.check()  # before the ack: a batch whose counts do not add up is not acknowledged
        self.stream.ack([msg.id for msg in messages])
        for observe in self.observers:
            try:
                observe(accepted)
            except Exception:  # an observer never stops the landing
                log.exception("stream observer %r failed on a batch of %d rows", observe,
                              len(accepted))
        result.seconds = time.perf_counter() - started
        log.debug("stream batch %s", result.to_dict())
        return result

    def _land(self, rows: pd.DataFrame, keys: list[tuple[str, str]],
              bad: list[tuple[Message, str | None, str]], now: dt.datetime) -> None:
        """Record, then write, the new accepted rows (one file per day; ``keys``: their event
        ids and digests) and the quarantined messages."""
        plan: list[tuple[StorePath, pa.Table]] = []
        records: list[tuple[str, str, str, bool]] = []
        if len(rows):
            days = rows["event_timestamp"].dt.date
            ids = pd.Series([k for k, _ in keys], index=rows.index, dtype=object)
            digests = dict(keys)
            for day in sorted(days.unique()):
                part = rows.loc[days == day]
                part_ids = ids.loc[part.index].tolist()
                path = (self.table_dir / f"day={day.isoformat()}"
                        / f"stream-{_name_hash(part_ids)}.parquet")
                # Sorted by event id: the same events give the same file, byte for byte.
                order = np.argsort(np.asarray(part_ids, dtype=object), kind="stable")
                plan.append((path, pa.Table.from_pandas(part.iloc[order], preserve_index=False)))
                relative = f"{OFFLINE_KEY}/{path.relative_to(self.settings.offline_root)}"
                records.extend((k, relative, digests[k], True) for k in part_ids)
        if bad:
            path = (self.quarantine_dir / f"received={now.date().isoformat()}"
                    / f"batch-{_name_hash(m.id for m, _, _ in bad)}.parquet")
            plan.append((path, pa.Table.from_pylist([
                {"message_id": m.id, "event_id": k,
                 "payload": None if m.payload is None else m.payload.decode("utf-8", "replace"),
                 "reject_reason": r, "received_at": now} for m, k, r in bad],
                schema=QUARANTINE_SCHEMA)))
            relative = str(Path(path.path).relative_to(self.settings.home))
            # Keyed by message: a redelivery is not quarantined twice, while a resend of the
            # event (corrected or not) is judged again.
            records.extend((f"message:{m.id}", relative, _digest(m.payload), False)
                           for m, _, _ in bad)
        # The index first: an event counts as landed only once its file exists too.
        self.index.record(records)
        for path, table in plan:
            path.write_parquet(table, mode=PRIVATE_FILE_MODE)

    def _push(self, accepted: pd.DataFrame) -> tuple[int, int]:
        """Each customer's latest accepted event to the online store, unless a newer one is
        already there, then its segment; the rows and the segments pushed."""
        if accepted.empty:
            return 0, 0
        latest = (accepted.sort_values(["event_timestamp", "created_timestamp"], kind="stable")
                  .drop_duplicates("customer_id", keep="last"))
        online = self.index.latest(latest["customer_id"].tolist())
        marks = [(int(c), _us(e), _us(k)) for c, e, k in
                 zip(latest["customer_id"], latest["event_timestamp"],
                     latest["created_timestamp"], strict=True)]
        fresh = [(e, k) >= online.get(c, (e, k)) for c, e, k in marks]
        rows = latest.loc[fresh]
        if rows.empty:
            return 0, 0
        rows = rows.reset_index(drop=True)
        self.store.push(PUSH_SOURCE, rows, to=_online_mode())
        segments = None if self.segmenter is None else self.segmenter(rows)
        if segments is not None and len(segments):
            self.store.push(SEGMENT_PUSH_SOURCE, segments, to=_online_mode())
        self.index.set_latest(m for m, ok in zip(marks, fresh, strict=True) if ok)
        return len(rows), 0 if segments is None else len(segments)


def validate_rows(rows: list[dict[str, Any]], now: dt.datetime, *,
                  earliest: dt.date | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """split_valid, the ingest rules, on each event day; index = position in ``rows``.

    Should the batch's validation raise, each row is validated on its own: the rows that
    raise alone are rejected with the error (type and message), the others validated
    together again. Only an error of the batch that no row of it raises alone (a bug, not
    an event) stops the batch, unacknowledged; so does a broken invariant.
    """
    positions = list(range(len(rows)))
    try:
        return _split(rows, positions, now, earliest)
    except _BUGS:
        raise
    except Exception as err:  # find the row, then judge the others
        log.warning("validating a batch of %d events failed (%s): validating them one by "
                    "one", len(rows), _error(err))
    failed: dict[int, str] = {}
    for j in positions:
        try:
            _split([rows[j]], [j], now, earliest)
        except _BUGS:
            raise
        except Exception as err:  # this event's, quarantined with it
            failed[j] = f"event could not be validated ({_error(err)})"
    rest = [j for j in positions if j not in failed]
    accepted, rejected = _split([rows[j] for j in rest], rest, now, earliest)
    errors = pd.DataFrame({"reject_reason": pd.Series(failed, dtype=object)})
    return accepted, pd.concat([rejected, errors]) if len(rejected) else errors


def _split(rows: list[dict[str, Any]], positions: list[int], now: dt.datetime,
           earliest: dt.date | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """split_valid on each event day of ``rows`` (indexed by ``positions``): accepted and
    rejected rows, each index a position, every position in exactly one of them."""
    if not rows:
        return _empty_accepted(), pd.DataFrame({"reject_reason": pd.Series(dtype=object)})
    frame = pd.DataFrame(rows, index=positions)
    frame["customer_id"] = frame["customer_id"].astype("int64")
    for column in ("event_timestamp", "created_timestamp"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    frame = frame.astype({name: "float64" for name in FEATURE_NAMES})
    days = frame["event_timestamp"].dt.date
    accepted, rejected = [], []
    for day in sorted(days.unique()):
        part = frame.loc[days == day]
        good, bad = split_valid(part, day, now=now, earliest=earliest)
        _check_split(part, good, bad, where=f"stream batch, day={day}")
        accepted.append(good)
        rejected.append(bad)
    return pd.concat(accepted), pd.concat(rejected)


def _check_split(rows: pd.DataFrame, accepted: pd.DataFrame, rejected: pd.DataFrame, *,
                 where: str) -> None:
    """The invariant of split_valid: accepted + rejected = the rows read, each row once (its
    position, the index, in exactly one of them: the batch maps them back to messages)."""
    check_rows_accounted(len(rows), len(accepted), len(rejected), where=where)
    if not accepted.index.append(rejected.index).sort_values().equals(rows.index.sort_values()):
        raise StreamInvariantError(f"{where}: split_valid's accepted and rejected rows are not "
                                   "the rows given, each once")


#: Errors of the code, not of an event: they stop the batch (unacknowledged, delivered again).
_BUGS = (StreamInvariantError, RowsUnaccounted)


def _online_mode():
    from feast.data_source import PushMode

    return PushMode.ONLINE


def _empty_accepted() -> pd.DataFrame:
    frame = pd.DataFrame({
        "customer_id": pd.Series(dtype="int64"),
        "event_timestamp": pd.Series(dtype="datetime64[ns, UTC]"),
        **{name: pd.Series(dtype="float64") for name in FEATURE_NAMES},
        "created_timestamp": pd.Series(dtype="datetime64[ns, UTC]"),
    })
    return frame


def consume(settings: Settings, *, max_events: int | None = None,
            seconds: float | None = None, segmenter: Segmenter | None = None,
            observers: Sequence[Callable[[pd.DataFrame], None]] = ()) -> dict:
    """``kmeans consume``: run the consumer on ``settings.stream.stream_url`` until SIGTERM or
    SIGINT, ``max_events`` events or ``seconds``; the counts."""
    stop = threading.Event()
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, lambda *_: stop.set())
    consumer = Consumer(settings, open_stream(settings), segmenter=segmenter,
                        observers=observers)
    try:
        result = consumer.run(stop, max_events=max_events, seconds=seconds)
    finally:
        consumer.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    out = result.to_dict()
    out["events_per_second"] = round(result.read / result.seconds, 1) if result.seconds else None
    return out
