"""Hamerly's bounds beside each staged block, on the executor that holds it.

A Spark source's Lloyd iterations (:meth:`pipeline.engine.spark.SparkBlockSource.lloyd_step`)
keep, per block and per (k, init) entry, the rows' assignment and bounds in files beside the
block in the executor's stage dir (memory-mapped, so a pass updates them in the page cache),
with the centroids they refer to (the worker keeps the maps for its next pass:
:func:`pipeline.engine.staging.mapped_file`). A block whose files are missing (its executor was
lost, or its task ran elsewhere) is computed in full for that pass and gets fresh ones; files
left from an earlier pass stay valid however far the centroids moved since (the bounds move by
the drift from the centroids they refer to), only looser. Every pass gives plain Lloyd's sums
and counts wherever it runs (:mod:`pipeline.engine.bounds`).

The files live under ``<stage dir>/<key>/bounds-<source run>/`` and go with the key's
retention, or an hour after their last use (:func:`pipeline.engine.staging.clean_stage`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from pipeline.engine.bounds import BoundedLloyd, Entry, row_norms
from pipeline.engine.kernel import Stats
from pipeline.engine.staging import Block, BlockSpec, forget_mapped, mapped_file, stage_root

BOUNDS_PREFIX = "bounds-"


def _folder(spec: BlockSpec, run: str) -> Path:
    return stage_root(spec) / spec.key / f"{BOUNDS_PREFIX}{run}"


def _x2(folder: Path, index: int, block: Block) -> np.ndarray:
    """``|x|²`` of the block's rows, computed once per executor and kept beside the bounds."""
    path = folder / f"block-{index:05d}.x2"
    rows = len(block.x)
    if path.exists() and path.stat().st_size == 8 * rows:
        return mapped_file(path, np.float64, (rows,))
    x2 = row_norms(np.asarray(block.x))
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    x2.tofile(tmp)
    os.replace(tmp, path)
    return x2


def _entry(folder: Path, index: int, entry_id: int, k: int, d: int, rows: int) -> Entry:
    """Entry ``entry_id``'s bounds for block ``index``: from its files, or fresh ones."""
    base = folder / f"e{entry_id}-block-{index:05d}"
    meta_path = base.with_suffix(".json")
    arrays = {".assign": np.int32, ".upper": np.float64, ".lower": np.float64}
    meta = None
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = None
    if meta is not None and meta.get("k") == k and meta.get("rows") == rows:
        maps = {s: mapped_file(base.with_suffix(s), t, (rows,), "r+")
                for s, t in arrays.items()}
        centroids = np.load(base.with_suffix(".ref.npy"), allow_pickle=False)
        return Entry(centroids, maps[".assign"], maps[".upper"], maps[".lower"],
                     fresh=bool(meta["fresh"]), skipped=float(meta["skipped"]),
                     changed=float(meta["changed"]))
    for suffix, dtype in arrays.items():  # fresh: zero-filled files of the block's length
        forget_mapped(base.with_suffix(suffix))
        with open(base.with_suffix(suffix), "wb") as out:
            out.truncate(rows * np.dtype(dtype).itemsize)
    maps = {s: mapped_file(base.with_suffix(s), t, (rows,), "r+")
            for s, t in arrays.items()}
    return Entry(np.zeros((k, d), np.float32), maps[".assign"], maps[".upper"],
                 maps[".lower"])


def _save(folder: Path, index: int, entry_id: int, entry: Entry, rows: int) -> None:
    base = folder / f"e{entry_id}-block-{index:05d}"
    np.save(base.with_suffix(".ref.npy"), entry.centroids, allow_pickle=False)
    base.with_suffix(".json").write_text(json.dumps(
        {"k": len(entry.centroids), "rows": rows, "fresh": entry.fresh,
         "skipped": entry.skipped, "changed": entry.changed}))


def bounded_block_stats(spec: BlockSpec, run: str, index: int, block: Block,
                        centroids: list[np.ndarray], entry_ids: list[int],
                        threads: int) -> tuple[list[Stats], float]:
    """One Lloyd step of a staged block with its bounds: per entry ``(sums, counts, NaN)``,
    plain Lloyd's numbers; and the share of the block's rows that skipped the distances
    (averaged over the entries)."""
    folder = _folder(spec, run)
    folder.mkdir(parents=True, exist_ok=True)
    os.utime(folder)
    x = np.asarray(block.x)
    rows, d = x.shape
    if rows == 0:
        return ([(np.zeros((len(c), d)), np.zeros(len(c)), float("nan"))
                 for c in centroids], 0.0)
    cents = [np.ascontiguousarray(c, dtype=np.float32) for c in centroids]
    entries = [_entry(folder, index, e, len(c), d, rows)
               for e, c in zip(entry_ids, cents, strict=True)]
    for entry_id, entry in zip(entry_ids, entries, strict=True):
        if not entry.fresh:  # a task that dies mid-update leaves bounds nobody trusts
            _save(folder, index, entry_id, Entry(entry.centroids, entry.assign, entry.upper,
                                                 entry.lower), rows)
    engine = BoundedLloyd(x, None if block.weights is None else np.asarray(block.weights),
                          threads=threads, x2=_x2(folder, index, block))
    stats = engine.step_with(entries, cents)
    # the arrays are shared mappings: their pages stay in the page cache for the next pass
    # (no msync: a lost page only costs a fresh pass, see above)
    for entry_id, entry in zip(entry_ids, entries, strict=True):
        _save(folder, index, entry_id, entry, rows)
    return stats, float(np.mean(engine.skipped[-1]))
