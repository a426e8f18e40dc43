"""Small I/O helpers shared by every layer: atomic writes, one file lock, one clock, hashes.

- :func:`atomic_path` is the one temp-then-rename step; :func:`atomic_write_bytes`,
  :func:`atomic_write_json` and :func:`atomic_write_parquet` are built on it, so readers never
  see half a file. Temporary names carry host, process, thread and a random part: a folder may
  be shared by several hosts (a network volume), and two writers must never share a temp file.
- :func:`file_lock` is the one advisory lock on a file (``fcntl.flock`` on its own open file,
  so it excludes other processes and other threads of this one).
- :func:`utc_now` and :func:`utc_now_iso` are the one clock: timezone-aware UTC.
- :class:`StorePath`: a local path or an object-store URI with the few operations the offline
  table needs (glob, exists, unlink, a whole-file Parquet write), through ``pyarrow.fs``.
- Owner-only modes (:data:`PRIVATE_FILE_MODE`, :data:`PRIVATE_DIR_MODE`) for what holds data or
  state other users of the machine must not read: the atomic writes take ``mode=``,
  :func:`private_dir` and :func:`make_private` set them, :func:`append_line` appends to an
  owner-only file (the audit trail). Not a default: files a process of another user reads
  (snapshots read by Spark executors on a shared volume) keep the umask's mode.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import fnmatch
import hashlib
import json
import os
import socket
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

LOCK_POLL_SECONDS = 0.05
#: Mode of a file only its owner may read and write.
PRIVATE_FILE_MODE = 0o600
#: Mode of a folder only its owner may list and enter.
PRIVATE_DIR_MODE = 0o700


# ---------------------------------------------------------------- clock


def utc_now() -> dt.datetime:
    """The current time, timezone-aware, in UTC."""
    return dt.datetime.now(dt.UTC)


def utc_now_iso(timespec: str = "seconds") -> str:
    """The current UTC time as ISO 8601 with its offset, e.g. ``2026-11-30T12:00:05+00:00``."""
    return utc_now().isoformat(timespec=timespec)


# ---------------------------------------------------------------- atomic writes


#: The variables through which a process's metrics live in files (prometheus_client's two names).
METRICS_DIR_VARIABLES = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")


def outliving_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a process that may outlive this one (a server, a scheduler): ``env``
    (default this process's) without the metrics folder Feast made for this process.

    Importing feast creates a temporary ``feast_metrics_*`` folder, points
    :data:`METRICS_DIR_VARIABLES` at it and deletes it when this process exits. A child that
    inherited the variables then fails on its first metric (``FileNotFoundError``) once this
    process is gone: ``make prod-up`` exits while its Airflow runs on. Without them, a child
    that imports feast makes (and removes) a folder of its own. A folder a user chose is kept.
    """
    out = dict(os.environ if env is None else env)
    for name in METRICS_DIR_VARIABLES:
        folder = out.get(name)
        if folder and Path(folder).name.startswith("feast_metrics_") \
                and Path(folder).parent == Path(tempfile.gettempdir()):
            del out[name]
    return out


def temp_name(path: Path) -> Path:
    """A temporary name beside ``path``, unique per host, process, thread and call."""
    tag = f"{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:12]}"
    return path.with_name(f".{path.name}.{tag}.tmp")


@contextmanager
def atomic_path(path: Path | str, *, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, rename it over ``path``.

    If the block raises, the temporary file is removed and ``path`` is left as it was. The
    parent folder is created if needed. ``mode`` (e.g. :data:`PRIVATE_FILE_MODE`) is set on the
    temporary file before the rename, so the file never appears at ``path`` with another mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        if mode is not None:
            # Created empty with the mode first: the data is never readable by others, not
            # even for the moment between writing and chmod.
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
            os.chmod(tmp, mode)  # the umask may have taken bits away
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)  # a writer that replaced the file got the umask's mode
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path | str, data: bytes, *, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` through a temporary name, so readers never see half a file."""
    path = Path(path)
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_bytes(data)
    return path


def atomic_write_json(path: Path | str, obj: Any, *, mode: int | None = None) -> Path:
    return atomic_write_bytes(
        path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode(), mode=mode)


def atomic_write_parquet(path: Path | str, table: pa.Table, *, mode: int | None = None) -> Path:
    path = Path(path)
    with atomic_path(path, mode=mode) as tmp:
        pq.write_table(table, tmp)
    return path


# ---------------------------------------------------------------- owner-only files


def make_private(path: Path | str) -> bool:
    """Give an existing file mode 0600 (a folder 0700), owner-only.

    Returns False, changing nothing, when ``path`` does not exist or belongs to another user
    (only the owner may change a mode).
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    if st.st_uid != os.getuid():
        return False
    wanted = PRIVATE_DIR_MODE if stat.S_ISDIR(st.st_mode) else PRIVATE_FILE_MODE
    if stat.S_IMODE(st.st_mode) != wanted:
        os.chmod(path, wanted)
    return True


def private_dir(path: Path | str) -> Path:
    """Create the folder ``path`` owner-only (0700), or make an existing one so.

    Missing parents are created with the usual mode; only ``path`` itself is made private,
    which is enough to keep everything below it from other users.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    make_private(path)
    return path


def append_line(path: Path | str, line: str, *, mode: int = PRIVATE_FILE_MODE) -> Path:
    """Append ``line`` and a newline to ``path`` with one ``O_APPEND`` write (appenders in other
    processes do not interleave within a line); the file is created with ``mode``, and an
    existing file of this user is brought to ``mode``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (line.rstrip("\n") + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        st = os.fstat(fd)
        if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    return path


def read_json_lines(path: Path | str) -> list[dict]:
    """The JSON objects of a file :func:`append_line` writes, one per line (none if the file
    does not exist yet)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- file lock


class LockBusy(RuntimeError):
    """Another process (or thread) holds the file lock."""

    def __init__(self, path: Path, wait: float):
        self.path = path
        self.wait = wait
        super().__init__(f"{path} is locked by another process or thread "
                         f"(waited {wait:g} s for it)")


@contextmanager
def file_lock(path: Path | str, *, wait: float = 0.0) -> Iterator[IO[str]]:
    """Hold an exclusive ``fcntl.flock`` on ``path`` for the block; :class:`LockBusy` if
    someone else still holds it after ``wait`` seconds (0: one try).

    The lock is taken on a file object of its own, so it excludes other processes and other
    threads of this process alike, and the operating system releases it if the holder dies.
    The lock file is yielded open for reading and writing: a holder may write its name in it
    for the one who is refused (the file is never deleted; deleting it would let two holders
    lock two different files).
    """
    if wait < 0:
        raise ValueError(f"wait={wait} should be >= 0 seconds")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    # Owner-only when created here: the holder writes its name, host and pid in it.
    with open(path, "a+", encoding="utf-8",
              opener=lambda name, flags: os.open(name, flags, PRIVATE_FILE_MODE)) as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockBusy(path, wait) from None
                time.sleep(LOCK_POLL_SECONDS)
        try:
            yield fh
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---------------------------------------------------------------- hashes


def table_hash(table: pa.Table) -> str:
    """SHA-256 of a table's content (schema and values), independent of chunking."""
    digest = hashlib.sha256()
    digest.update(table.schema.to_string(show_schema_metadata=False).encode())
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema.remove_metadata()) as writer:
        writer.write_table(table.combine_chunks().replace_schema_metadata(None))
    digest.update(sink.getvalue().to_pybytes())
    return digest.hexdigest()


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def arrow_filesystem(path: str | Path) -> tuple[pafs.FileSystem, str]:
    """``(pyarrow filesystem, path in it)`` of a local folder or an object-store URI
    (``s3://``, ``gs://``, ``abfs://``, ``hdfs://``, ``file://``)."""
    text = str(path)
    if "://" in text:
        return pafs.FileSystem.from_uri(text)
    return pafs.LocalFileSystem(), str(Path(text).expanduser().absolute())


# ---------------------------------------------------------------- local or object-store paths


class StoreUnreachable(LookupError):
    """A store (an object store's endpoint, a mounted volume) did not answer or refused."""


@contextmanager
def _store_errors(where: StorePath, doing: str) -> Iterator[None]:
    """An object store's failure as one line naming the store and what was being done; a
    missing file stays :class:`FileNotFoundError`."""
    try:
        yield
    except (FileNotFoundError, NotADirectoryError):
        raise
    except OSError as err:
        detail = " ".join(str(err).split())[:300]
        raise StoreUnreachable(f"{where} cannot be {doing} ({type(err).__name__}: "
                               f"{detail})") from err


class StorePath:
    """A file or folder on the local disk or in an object store, through ``pyarrow.fs``: the
    few path operations the offline table's writers and readers need, so the same code lands
    files in ``<home>/offline`` and in ``s3://bucket/offline``.

    Built by :meth:`at` from a local path or a URI (``s3://bucket/prefix?endpoint_override=
    host:port&scheme=http``: options in the query, credentials from the store's environment).
    ``str()`` is the local path, or the URI without its query (options may carry a secret).
    On the local disk a Parquet write is atomic (temporary name, then rename) and takes a
    mode; in an object store each object is written whole or not at all.

    Examples
    --------
    >>> table = StorePath.at("s3://lake/offline?scheme=http") / "customer_profile"  # doctest: +SKIP
    >>> table.glob("day=*/*.parquet")  # doctest: +SKIP
    """

    __slots__ = ("fs", "path", "uri")

    def __init__(self, fs: pafs.FileSystem, path: str, uri: str) -> None:
        self.fs = fs
        self.path = path.rstrip("/") or "/"
        self.uri = uri.rstrip("/") or "/"

    @classmethod
    def at(cls, location: str | Path | StorePath) -> StorePath:
        if isinstance(location, StorePath):
            return location
        fs, path = arrow_filesystem(location)
        text = str(location)
        return cls(fs, path, text.split("?", 1)[0] if "://" in text else path)

    @property
    def local(self) -> bool:
        return self.fs.type_name == "local"

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        return self.name.rsplit(".", 1)[0] if "." in self.name else self.name

    @property
    def parent(self) -> StorePath:
        return StorePath(self.fs, self.path.rsplit("/", 1)[0], self.uri.rsplit("/", 1)[0])

    def __truediv__(self, name: str) -> StorePath:
        name = str(name).strip("/")
        return StorePath(self.fs, f"{self.path}/{name}", f"{self.uri}/{name}")

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"StorePath({self.uri!r})"

    def __fspath__(self) -> str:
        if not self.local:
            raise TypeError(f"{self.uri} is in an object store, not a local path")
        return self.path

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, StorePath) and self.uri == other.uri
                and self.fs.type_name == other.fs.type_name)

    def __hash__(self) -> int:
        return hash((self.fs.type_name, self.uri))

    def __lt__(self, other: StorePath) -> bool:
        return self.uri < other.uri

    def relative_to(self, other: StorePath) -> str:
        if self.path == other.path:
            return ""
        if not self.path.startswith(other.path.rstrip("/") + "/"):
            raise ValueError(f"{self} is not in {other}")
        return self.path[len(other.path.rstrip("/")) + 1:]

    def _info(self) -> pafs.FileInfo:
        with _store_errors(self, "read"):
            return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            with _store_errors(self, "deleted"):
                self.fs.delete_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def glob(self, pattern: str) -> list[StorePath]:
        """The files below this folder whose path relative to it matches ``pattern``, segment
        by segment (``day=*/sql-*.parquet``), sorted; none when the folder is missing."""
        want = pattern.strip("/").split("/")
        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=len(want) > 1)
        found = []
        with _store_errors(self, "listed"):
            listing = self.fs.get_file_info(selector)
        for info in listing:
            if info.type != pafs.FileType.File:
                continue
            parts = info.path[len(self.path) + 1:].split("/")
            if len(parts) == len(want) and all(map(fnmatch.fnmatchcase, parts, want)):
                found.append(self / "/".join(parts))
        return sorted(found)

    def write_parquet(self, table: pa.Table, *, mode: int | None = None) -> StorePath:
        """Write ``table`` here: atomically with ``mode`` on the local disk (see
        :func:`atomic_write_parquet`), as one whole object in a store (``mode`` does not apply:
        the store's access policy does)."""
        if self.local:
            atomic_write_parquet(self.path, table, mode=mode)
        else:
            with _store_errors(self, "written"):
                pq.write_table(table, self.path, filesystem=self.fs)
        return self

    def read_table(self, columns: list[str] | None = None) -> pa.Table:
        with _store_errors(self, "read"):
            return pq.read_table(self.path, filesystem=self.fs, columns=columns)
