"""The segment model on its own: preprocessing, reading a saved artifact, assigning clusters.

This module is the part of the model that travels with it. It imports only the standard
library and NumPy, never the project, because MLflow logs it next to the models-from-code file
(``code_paths``) and imports it by its top-level name ``kmeans_segments`` wherever the model is
loaded: ``mlflow.pyfunc.load_model``, ``mlflow models serve``, ``mlflow.pyfunc.spark_udf``.

An artifact is a folder: ``centroids.npy`` (no pickle), ``model.json`` (metadata and the
preprocessing) and ``checksums.json`` (SHA-256 of the other two). :meth:`SegmentModel.load`
verifies every checksum and refuses a modified or incomplete artifact. (The checksums travel
with the files: they catch corruption and edits of one file, not someone who rewrites the
checksums too; that needs the registry's access control.) Writing lives in the project
(``pipeline.model.artifact``).

Example
-------
>>> import numpy as np
>>> rows = np.array([[1.0, 10.0], [3.0, 30.0], [np.nan, 20.0]])
>>> pre = Preprocessor.fit(rows, ["a", "b"], log_features=["b"])
>>> model = SegmentModel(pre.transform(rows)[:2], pre, {})
>>> model.assign(np.array([[1.0, 10.0]])).cluster.tolist()
[0]
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Self

import numpy as np

FORMAT_VERSION = 1
CENTROIDS = "centroids.npy"
METADATA = "model.json"
CHECKSUMS = "checksums.json"
FILES = (CENTROIDS, METADATA)  # the files checksums.json covers
OUTPUTS = ("cluster", "distance", "runner_up", "margin", "ood")
_CHUNK_DOUBLES = 32_768  # a (rows, k) block of squared distances: 256 KiB, stays in cache


class ArtifactError(ValueError):
    """The artifact is missing, incomplete or does not match its checksums."""


# ---------------------------------------------------------------- preprocessing


class PreprocessingArrays(NamedTuple):
    """The fitted preprocessing as arrays: what a compiled copy of :meth:`Preprocessor.transform`
    needs (the server's one-row path)."""

    log_cols: np.ndarray  # int64 positions of the log1p columns
    medians: np.ndarray  # float64, in log space for log columns
    means: np.ndarray  # float64
    stds: np.ndarray  # float64, never 0


def _log1p_columns(raw: np.ndarray, cols: np.ndarray) -> None:
    """Step 1, in place: ``log1p(max(x, 0))`` on the log columns (NaN stays NaN)."""
    if len(cols):
        raw[:, cols] = np.log1p(np.maximum(raw[:, cols], 0.0))


def _impute(raw: np.ndarray, medians: np.ndarray) -> None:
    """Step 2, in place: NaN (missing) becomes the column's training median."""
    missing = np.isnan(raw)
    if missing.any():
        raw[missing] = np.broadcast_to(medians, raw.shape)[missing]


def _standardise(raw: np.ndarray, means: np.ndarray, stds: np.ndarray) -> np.ndarray:
    """Step 3: ``(x - mean) / std`` in float64, then float32 (the model space)."""
    raw -= means
    raw /= stds
    return raw.astype(np.float32)


def _as_float_rows(data: Any, names: Sequence[str]) -> np.ndarray:
    """A float64 copy of ``data``'s feature columns: a DataFrame (columns by name) or an array
    (columns in the order of ``names``)."""
    if hasattr(data, "columns"):  # a pandas DataFrame, without importing pandas
        absent = [n for n in names if n not in data.columns]
        if absent:
            raise ValueError(f"the frame lacks feature columns {absent}; it has "
                             f"{list(data.columns)}")
        return np.asarray(data[list(names)].to_numpy(dtype=np.float64, na_value=np.nan))
    raw = np.array(data, dtype=np.float64)  # a copy: the steps work in place
    if raw.ndim != 2 or raw.shape[1] != len(names):
        raise ValueError(f"expected rows of shape (n, {len(names)}) for features "
                         f"{list(names)}, got shape {raw.shape}")
    return raw


@dataclass(frozen=True)
class Preprocessor:
    """log1p for the skewed columns, median imputation of missing values, standardisation.

    Fitted by :meth:`fit` and stored as plain JSON (:meth:`to_dict`), never as a pickle. Fitting
    runs the same steps as :meth:`transform`, each defined once: the medians are taken after the
    log step, the means and standard deviations after the imputation.
    """

    feature_names: list[str]
    log_features: list[str]
    medians: list[float]
    means: list[float]
    stds: list[float]
    arrays: PreprocessingArrays = field(init=False, repr=False, compare=False)

    @classmethod
    def fit(cls, frame: Any, feature_names: Sequence[str], *,
            log_features: Collection[str] = ()) -> Preprocessor:
        """Fit on ``frame`` (a DataFrame, or an array whose columns are ``feature_names``).

        ``log_features`` names the columns that get ``log1p`` first (a subset of
        ``feature_names``). NaN marks a missing value; a column with no value at all is refused.
        """
        names = [str(n) for n in feature_names]
        unknown = sorted(set(log_features) - set(names))
        if unknown:
            raise ValueError(f"log_features {unknown} are not among feature_names {names}")
        logs = [n for n in names if n in set(log_features)]
        raw = _as_float_rows(frame, names)
        if len(raw) == 0:
            raise ValueError(f"cannot fit preprocessing on 0 rows of features {names}")
        _log1p_columns(raw, _positions(names, logs))
        empty = [n for n, e in zip(names, np.isnan(raw).all(axis=0), strict=True) if e]
        if empty:
            raise ValueError(f"feature columns {empty} have no values at all")
        medians = np.nanmedian(raw, axis=0)
        _impute(raw, medians)
        stds = raw.std(axis=0)
        stds[stds == 0] = 1.0
        return cls(names, logs, medians.tolist(), raw.mean(axis=0).tolist(), stds.tolist())

    def __post_init__(self) -> None:
        # Arrays for transform, built once: the server calls it for every request.
        object.__setattr__(self, "arrays", PreprocessingArrays(
            _positions(self.feature_names, self.log_features),
            np.asarray(self.medians, dtype=np.float64),
            np.asarray(self.means, dtype=np.float64),
            np.asarray(self.stds, dtype=np.float64)))

    def transform(self, data: Any) -> np.ndarray:
        """Raw feature values (DataFrame or (n, d) array, NaN = missing) to model space
        (float32)."""
        raw = _as_float_rows(data, self.feature_names)
        a = self.arrays
        _log1p_columns(raw, a.log_cols)
        _impute(raw, a.medians)
        return _standardise(raw, a.means, a.stds)

    def inverse_transform(self, x: np.ndarray) -> np.ndarray:
        """Model-space rows back to raw feature values (float64): the rows :meth:`transform`
        maps to ``x`` (up to float32 rounding; a log column's values below 0 come back as 0)."""
        a = self.arrays
        raw = np.asarray(x, dtype=np.float64) * a.stds + a.means
        if len(a.log_cols):
            raw[:, a.log_cols] = np.maximum(np.expm1(raw[:, a.log_cols]), 0.0)
        return raw

    def to_dict(self) -> dict[str, list]:
        return {"feature_names": list(self.feature_names),
                "log_features": list(self.log_features), "medians": list(self.medians),
                "means": list(self.means), "stds": list(self.stds)}

    @classmethod
    def from_dict(cls, data: dict[str, list]) -> Preprocessor:
        return cls(**data)


def _positions(names: Sequence[str], chosen: Collection[str]) -> np.ndarray:
    wanted = set(chosen)
    return np.asarray([i for i, n in enumerate(names) if n in wanted], dtype=np.int64)


# ---------------------------------------------------------------- the model


@dataclass
class Assignment:
    """Per row: nearest cluster id, its distance, the runner-up cluster id, the margin
    (runner-up distance minus distance) and whether the row is out of distribution."""

    cluster: np.ndarray
    distance: np.ndarray
    runner_up: np.ndarray
    margin: np.ndarray
    ood: np.ndarray


def artifact_checksums(folder: Path | str) -> dict[str, str]:
    """SHA-256 of each file of an artifact that ``checksums.json`` covers."""
    return {name: _file_sha256(Path(folder) / name) for name in FILES}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class SegmentModel:
    """Fitted centroids (model space) plus the preprocessing that maps raw features there."""

    def __init__(self, centroids: np.ndarray, preprocessor: Preprocessor,
                 metadata: dict[str, Any]):
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.preprocessor = preprocessor
        self.metadata = metadata
        self.feature_names = preprocessor.feature_names
        self.k = len(self.centroids)
        if self.centroids.ndim != 2 or self.centroids.shape[1] != len(self.feature_names):
            raise ArtifactError(f"centroids have shape {self.centroids.shape}; expected "
                                f"(k, {len(self.feature_names)}) for features "
                                f"{self.feature_names}")
        # Stable cluster ids (matched to the previous champion); row i answers as cluster_ids[i].
        self.cluster_ids = np.asarray(metadata.get("cluster_ids", range(self.k)), dtype=np.int64)
        if self.cluster_ids.shape != (self.k,):
            raise ArtifactError(f"cluster_ids has {len(self.cluster_ids)} entries for k={self.k}")
        self.ood_threshold = float(metadata.get("distance_p99", np.inf))
        self._centroids64_t = np.ascontiguousarray(self.centroids.T, dtype=np.float64)

    @classmethod
    def load(cls, folder: Path | str) -> Self:
        """Read and verify an artifact folder; :class:`ArtifactError` if it is incomplete,
        modified or of another format version."""
        folder = Path(folder)
        try:
            expected = json.loads((folder / CHECKSUMS).read_text())
        except (OSError, ValueError) as err:
            raise ArtifactError(f"artifact {folder} has no readable {CHECKSUMS}") from err
        for name in FILES:
            if not (folder / name).exists():
                raise ArtifactError(f"artifact {folder} lacks {name}")
        for name, actual in artifact_checksums(folder).items():
            if actual != expected.get(name):
                raise ArtifactError(
                    f"artifact {folder}: {name} has sha256 {actual[:12]}…, {CHECKSUMS} says "
                    f"{str(expected.get(name))[:12]}…; refusing a modified artifact")
        meta = json.loads((folder / METADATA).read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"artifact format_version={meta.get('format_version')}, "
                                f"this code reads {FORMAT_VERSION}")
        centroids = np.load(folder / CENTROIDS, allow_pickle=False)
        pre = Preprocessor.from_dict(meta.pop("preprocessing"))
        if centroids.shape != (meta["k"], len(pre.feature_names)):
            raise ArtifactError(f"centroids shape {centroids.shape} does not match "
                                f"k={meta['k']} and {len(pre.feature_names)} features")
        return cls(centroids, pre, meta)

    def assign(self, raw: Any) -> Assignment:
        """Assign raw feature rows (DataFrame or (n, d) array; NaN = missing, imputed)."""
        return self.assign_scaled(self.preprocessor.transform(raw))

    def assign_scaled(self, x: np.ndarray) -> Assignment:
        """Nearest and runner-up centroid of rows already in model space (vectorised).

        Squared distances are summed feature by feature in float64 from exact differences (no
        ``|x|² - 2x·c + |c|²`` expansion, which loses the small distances to cancellation), so
        any other implementation that sums in the same order gets the same numbers.
        """
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise ValueError(f"expected model-space rows of shape (n, {len(self.feature_names)}),"
                             f" got shape {x.shape}")
        n, k = len(x), self.k
        best = np.empty(n, np.int64)
        second = np.empty(n, np.int64)
        d_best = np.empty(n, np.float64)
        d_second = np.empty(n, np.float64)
        xt = np.ascontiguousarray(x.T, dtype=np.float64)  # one feature's values contiguous
        ct = self._centroids64_t
        step = max(64, _CHUNK_DOUBLES // k)
        acc = np.empty((min(n, step), k), np.float64)  # squared distances of one chunk
        tmp = np.empty_like(acc)
        with np.errstate(over="ignore", invalid="ignore"):
            for lo in range(0, n, step):
                hi = min(n, lo + step)
                a, t = acc[:hi - lo], tmp[:hi - lo]
                np.subtract(xt[0, lo:hi, None], ct[0], out=a)
                np.multiply(a, a, out=a)
                for j in range(1, len(ct)):
                    np.subtract(xt[j, lo:hi, None], ct[j], out=t)
                    np.multiply(t, t, out=t)
                    a += t
                rows = np.arange(hi - lo)
                b = a.argmin(axis=1)  # the first of equal distances, as a sequential scan
                best[lo:hi], d_best[lo:hi] = b, a[rows, b]
                if k > 1:  # the runner-up: the nearest once the best is masked
                    a[rows, b] = np.inf
                    r = a.argmin(axis=1)
                    second[lo:hi], d_second[lo:hi] = r, a[rows, r]
                else:
                    second[lo:hi], d_second[lo:hi] = b, d_best[lo:hi]
        dist = np.sqrt(d_best)
        dist2nd = np.sqrt(d_second)
        ids = self.cluster_ids
        return Assignment(ids[best], dist, ids[second], dist2nd - dist, dist > self.ood_threshold)
