"""The Parquet files of a snapshot, wherever they are: a local path or any URI ``pyarrow.fs``
reads (``s3://``, ``gs://``, ``abfs://``, ``hdfs://``), listed with their row counts and
stamps, and grouped into tasks of about the same number of rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def filesystem(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """``(pyarrow filesystem, path inside it)`` of a local path or a URI.

    ``s3a://`` and ``s3n://`` (Hadoop's names) read as ``s3://``.

    Examples
    --------
    >>> fs, path = filesystem("/tmp/snapshot")
    >>> fs.type_name, path
    ('local', '/tmp/snapshot')
    """
    text = str(uri)
    if "://" not in text:
        return pafs.LocalFileSystem(), str(Path(text).expanduser().absolute())
    scheme, rest = text.split("://", 1)
    if scheme in ("s3a", "s3n"):
        text = f"s3://{rest}"
    if scheme == "file":
        return pafs.LocalFileSystem(), rest
    return pafs.FileSystem.from_uri(text)


def join_path(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


@dataclass(frozen=True)
class ParquetFiles:
    """The Parquet files of a folder (or prefix) and what identifies their content."""

    names: tuple[str, ...]
    rows: tuple[int, ...]
    stamps: tuple[tuple[str, int, int, str], ...]  # (name, size, mtime in ns, ETag or "")

    @property
    def offsets(self) -> tuple[tuple[str, int], ...]:
        starts = np.concatenate([[0], np.cumsum(self.rows)[:-1]]).astype(int)
        return tuple(zip(self.names, (int(s) for s in starts), strict=True))


def list_parquet(uri: str | Path, names: Sequence[str] | None = None) -> ParquetFiles:
    """The ``*.parquet`` files of a folder or object-store prefix (or the given ``names`` in
    it), in name order, with their row counts (from the footers), and their size,
    modification time and ETag (object stores) from the store.

    Examples
    --------
    >>> list_parquet("snapshot/").names  # doctest: +SKIP
    ('part-00000.parquet', 'part-00001.parquet')
    """
    fs, base = filesystem(uri)
    if names is None:
        try:
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=False))
        except FileNotFoundError:
            infos = []
        infos = [i for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(
            ".parquet")]
    else:
        infos = fs.get_file_info([join_path(base, n) for n in names])
        missing = [i.path for i in infos if i.type != pafs.FileType.File]
        if missing:
            raise FileNotFoundError(f"snapshot files missing: {missing}")
    infos = sorted(infos, key=lambda i: i.base_name)
    if not infos:
        raise FileNotFoundError(f"no Parquet files in {uri}")
    rows, etags = [], []
    for info in infos:
        with fs.open_input_file(info.path) as handle:
            rows.append(pq.ParquetFile(handle).metadata.num_rows)
            etag = (handle.metadata() or {}).get("ETag", b"")  # object stores; local: none
            etags.append(etag.decode() if isinstance(etag, bytes) else str(etag))
    stamps = tuple((i.base_name, int(i.size or 0), int(i.mtime_ns or 0), etag)
                   for i, etag in zip(infos, etags, strict=True))
    return ParquetFiles(tuple(i.base_name for i in infos), tuple(rows), stamps)


def balanced_groups(names: Sequence[str], rows: Sequence[int], parts: int) -> tuple:
    """``parts`` groups of consecutive files (in name order) holding about the same number of
    rows each: partitions balanced by rows, not by file count. A file is never split.

    Examples
    --------
    >>> balanced_groups(["a", "b", "c", "d"], [100, 10, 10, 80], 2)
    (('a',), ('b', 'c', 'd'))
    """
    if parts < 1:
        raise ValueError(f"partitions={parts} should be >= 1")
    cum = np.cumsum(np.asarray(rows, dtype=np.int64))
    total = int(cum[-1]) if len(cum) else 0
    cuts = [0]
    for j in range(1, min(parts, len(names))):
        target = total * j / parts
        i = int(np.searchsorted(cum, target, side="left"))  # file where the target falls
        before = int(cum[i - 1]) if i > 0 else 0  # rows up to a cut before that file
        after = int(cum[i]) if i < len(cum) else total  # ... and after it
        cut = i if target - before < after - target else i + 1  # the nearer of the two
        cut = max(cut, cuts[-1] + 1)
        if cut >= len(names):
            break
        cuts.append(cut)
    cuts.append(len(names))
    return tuple(tuple(names[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a)

