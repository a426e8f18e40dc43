"""The segment model on its own: preprocessing, reading a saved artifact, assigning clusters.

This module is the part of the model that travels with it. It imports only the standard
library and NumPy, never the project, because MLflow logs it next to the models-from-code file
(``code_paths``) and imports it by its top-level name ``kmeans_segments`` wherever the model is
loaded: ``mlflow.pyfunc.load_model``, ``mlflow models serve``, ``mlflow.pyfunc.spark_udf``.

An artifact is a folder: ``centroids.npy`` (no pickle), ``model.json`` (metadata and the
preprocessing) and ``checksums.json`` (SHA-256 of the other two). :meth:`SegmentModel.load`
verifies every checksum and refuses a modified or incomplete artifact. (The checksums travel
with the files: they catch corruption and edits of one file, not someone who rewrites the
checksums too; that needs the registry's access control.) It then checks what the files hold,
so an artifact whose checksums were rewritten still cannot load what the model cannot score:
the schema of both JSON files and their types, float centroids only (never a pickle or an
object array), one unique integer id per cluster, and finite centroids, medians, means and
standard deviations (each > 0). Every refusal is an :class:`ArtifactError` naming the file,
the field and what it held. Writing lives in the project (``pipeline.model.artifact``).

What a row may hold to be scored is defined here too, once, for the logged model and the
project's server alike (:class:`InputCheck`): at least one known value, and each value finite
and within its feature's valid range widened by a tolerance (the ranges and the tolerance are
recorded in ``model.json``; a feature without a range: float32's range). A refused row raises
:class:`InputError`, whose message names the row, the feature, its value and the accepted range;
the server answers 400 with the same text.

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
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple, Self

import numpy as np

FORMAT_VERSION = 1
CENTROIDS = "centroids.npy"
METADATA = "model.json"
CHECKSUMS = "checksums.json"
FILES = (CENTROIDS, METADATA)  # the files checksums.json covers
_CHUNK_DOUBLES = 32_768  # a (rows, k) block of squared distances: 256 KiB, stays in cache


class ArtifactError(ValueError):
    """The artifact is missing, incomplete or does not match its checksums."""


class InputError(ValueError):
    """Rows that cannot be scored; the message names each row (up to :data:`NAMED_ROWS`), the
    feature, its value and the accepted range."""


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
    """A writable float64 copy of ``data``'s feature columns: a DataFrame (columns by name) or
    an array (columns in the order of ``names``). The steps work in place on it."""
    if hasattr(data, "columns"):  # a pandas DataFrame, without importing pandas
        absent = [n for n in names if n not in data.columns]
        if absent:
            raise ValueError(f"the frame lacks feature columns {absent}; it has "
                             f"{list(data.columns)}")
        # copy=True: under pandas 3 (copy-on-write) to_numpy otherwise hands out a read-only
        # view of the frame's block.
        rows = data[list(names)].to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
        return rows if rows.flags.writeable else rows.copy()
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
    def from_dict(cls, data: Any) -> Preprocessor:
        """The preprocessing stored by :meth:`to_dict`, checked: :class:`ArtifactError` names
        the first field that is missing, of the wrong type or length, or not finite."""
        if not isinstance(data, dict):
            raise ArtifactError(f"preprocessing must be an object with {sorted(_PRE_FIELDS)}, "
                                f"got {_kind(data)}")
        missing, extra = sorted(_PRE_FIELDS - set(data)), sorted(set(data) - _PRE_FIELDS)
        if missing or extra:
            raise ArtifactError(f"preprocessing has fields {sorted(data)}; expected exactly "
                                f"{sorted(_PRE_FIELDS)} (missing {missing}, unknown {extra})")
        names = data["feature_names"]
        if (not isinstance(names, list) or not names
                or not all(isinstance(n, str) and n for n in names)):
            raise ArtifactError(f"preprocessing.feature_names must be a non-empty list of "
                                f"names, got {_kind(names)}")
        if len(set(names)) != len(names):
            raise ArtifactError(f"preprocessing.feature_names repeats a name: {names}")
        logs = data["log_features"]
        if not isinstance(logs, list) or not all(isinstance(n, str) for n in logs):
            raise ArtifactError(f"preprocessing.log_features must be a list of names, got "
                                f"{_kind(logs)}")
        if set(logs) - set(names):
            raise ArtifactError(f"preprocessing.log_features {sorted(set(logs) - set(names))} "
                                f"are not among feature_names {names}")
        columns = {}
        for key in ("medians", "means", "stds"):
            values = data[key]
            if not isinstance(values, list) or len(values) != len(names):
                raise ArtifactError(f"preprocessing.{key} must be a list of {len(names)} "
                                    f"numbers (one per feature), got {_kind(values)}")
            for name, v in zip(names, values, strict=True):
                if not _finite_number(v):
                    raise ArtifactError(f"preprocessing.{key} of feature {name!r} is "
                                        f"{_kind(v)}; it must be a finite number")
                if key == "stds" and v <= 0:
                    raise ArtifactError(f"preprocessing.stds of feature {name!r} is {v!r}; a "
                                        "standard deviation must be > 0 (it divides)")
            columns[key] = [float(v) for v in values]
        return cls(list(names), [n for n in names if n in set(logs)], columns["medians"],
                   columns["means"], columns["stds"])


_PRE_FIELDS = frozenset({"feature_names", "log_features", "medians", "means", "stds"})


def _finite_number(value: Any) -> bool:
    """A JSON number (not a bool) that is a finite float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer beyond float's range
        return False


def _kind(value: Any) -> str:
    """What a refused value was, short: its type and a clipped repr."""
    text = repr(value)
    if len(text) > 60:
        text = text[:60] + "…"
    return f"{type(value).__name__} {text}"


def _positions(names: Sequence[str], chosen: Collection[str]) -> np.ndarray:
    wanted = set(chosen)
    return np.asarray([i for i, n in enumerate(names) if n in wanted], dtype=np.int64)


# ---------------------------------------------------------------- what a row may hold

#: Bound of a value of a feature without a recorded range: what float32 holds.
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: The tolerance a model applies when its artifact records none (the server's default).
DEFAULT_RANGE_TOLERANCE = 10.0
#: How many refused rows an :class:`InputError` names.
NAMED_ROWS = 5
#: What :meth:`InputCheck.flags` finds in a row.
ROW_OK, ROW_OUTSIDE, ROW_EMPTY = 0, 1, 2


class InputCheck:
    """What a raw feature row must hold to be scored: at least one known value (NaN marks a
    missing one), and every known value finite and within its feature's valid range
    ``[min, max]`` widened by ``tolerance`` times that range's width on each side (a feature
    without a range: float32's range).

    The one definition of the check: the logged model (``SegmentPyfunc.predict``) and the
    project's server both call it, and raise its message (the server as a 400). The server finds
    the flags with a compiled copy of :meth:`flags` (a test keeps the two equal).
    """

    def __init__(self, names: Sequence[str], ranges: Any = None,
                 tolerance: float = DEFAULT_RANGE_TOLERANCE):
        if not _finite_number(tolerance) or tolerance < 0:
            raise ValueError(f"range tolerance must be a finite number >= 0, got "
                             f"{_kind(tolerance)}")
        self.names = [str(n) for n in names]
        self.tolerance = float(tolerance)
        ranges = dict(ranges or {})
        self.ranges: dict[str, tuple[float, float]] = {}
        self.lo = np.full(len(self.names), -FLOAT32_MAX)
        self.hi = np.full(len(self.names), FLOAT32_MAX)
        for j, name in enumerate(self.names):
            if name not in ranges:
                continue
            low, high = (float(v) for v in ranges[name])
            self.ranges[name] = (low, high)
            slack = self.tolerance * (high - low)
            self.lo[j] = max(low - slack, -FLOAT32_MAX)
            self.hi[j] = min(high + slack, FLOAT32_MAX)

    def flags(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """Per row of ``x`` (n, d) float64: ``ROW_OUTSIDE`` when a value lies outside its
        feature's accepted range (infinity included), ``ROW_EMPTY`` when every value is missing,
        else ``ROW_OK``; and how many rows are not OK."""
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            outside = ((x < self.lo) | (x > self.hi)).any(axis=1)
        empty = np.isnan(x).all(axis=1)
        flags = np.where(outside, ROW_OUTSIDE, np.where(empty, ROW_EMPTY, ROW_OK))
        flags = flags.astype(np.int8)
        return flags, int(np.count_nonzero(flags))

    def problem(self, row: np.ndarray, flag: int) -> str:
        """Why one row cannot be scored, naming the feature, its value and what is accepted."""
        if flag == ROW_EMPTY:
            return ("no feature value (all null); a row needs at least one known value of "
                    f"{self.names}")
        with np.errstate(invalid="ignore"):
            j = int(np.flatnonzero((row < self.lo) | (row > self.hi))[0])
        name, value = self.names[j], float(row[j])
        if not math.isfinite(value):
            return (f"feature {name}: {value} is not a finite number (accepted range "
                    f"[{self.lo[j]:.6g}, {self.hi[j]:.6g}])")
        spec = self.ranges.get(name)
        valid = (f"valid range [{spec[0]:g}, {spec[1]:g}] widened by {self.tolerance:g} times "
                 "its width (KMEANS_RANGE_TOLERANCE)" if spec is not None
                 else "float32's range")
        return (f"feature {name}: {value:.6g} is outside the accepted range "
                f"[{self.lo[j]:.6g}, {self.hi[j]:.6g}] ({valid})")

    def message(self, x: np.ndarray, flags: np.ndarray, bad: int) -> str:
        """The refusal of a batch: the first :data:`NAMED_ROWS` refused rows, by position."""
        rows = np.flatnonzero(flags)
        problems = [f"row {i}: {self.problem(x[i], flags[i])}"
                    for i in rows[:NAMED_ROWS].tolist()]
        more = f" (and {bad - NAMED_ROWS} more rows)" if bad > NAMED_ROWS else ""
        return "; ".join(problems) + more

    def check(self, x: np.ndarray) -> None:
        """:class:`InputError` naming the refused rows of ``x``, if any."""
        flags, bad = self.flags(x)
        if bad:
            raise InputError(self.message(np.asarray(x, dtype=np.float64), flags, bad))


def _input_check(names: list[str], metadata: dict[str, Any]) -> InputCheck:
    """The check recorded in ``model.json`` (``input_ranges``, ``range_tolerance``), checked:
    :class:`ArtifactError` names what is wrong."""
    ranges = metadata.get("input_ranges")
    if ranges is None:
        ranges = {}
    if not isinstance(ranges, dict):
        raise ArtifactError(f"input_ranges must be an object {{feature: [min, max]}}, got "
                            f"{_kind(ranges)}")
    for name, pair in ranges.items():
        if name not in names:
            raise ArtifactError(f"input_ranges names {name!r}, which is not among the "
                                f"features {names}")
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(_finite_number(v) for v in pair) or pair[0] > pair[1]):
            raise ArtifactError(f"input_ranges of feature {name!r} must be [min, max], finite "
                                f"numbers with min <= max, got {_kind(pair)}")
    tolerance = metadata.get("range_tolerance", DEFAULT_RANGE_TOLERANCE)
    if not _finite_number(tolerance) or tolerance < 0:
        raise ArtifactError(f"range_tolerance must be a finite number >= 0, got "
                            f"{_kind(tolerance)}")
    return InputCheck(names, ranges, tolerance)


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


#: The output columns, in order: the fields of :class:`Assignment`. (The project declares each
#: one's types for every side in ``pipeline.model.schema``; this module travels with the model
#: and imports nothing of the project, so a test checks the two agree.)
OUTPUTS: tuple[str, ...] = tuple(f.name for f in fields(Assignment))


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
        raw = np.asarray(centroids)
        if raw.dtype.kind not in "fiu":
            raise ArtifactError(f"centroids have dtype {raw.dtype}; expected real numbers")
        with np.errstate(over="ignore", invalid="ignore"):  # refused below, not warned about
            self.centroids = np.ascontiguousarray(raw, dtype=np.float32)
        self.preprocessor = preprocessor
        self.metadata = metadata
        self.feature_names = preprocessor.feature_names
        self.k = len(self.centroids)
        if (self.centroids.ndim != 2 or self.k == 0
                or self.centroids.shape[1] != len(self.feature_names)):
            raise ArtifactError(f"centroids have shape {self.centroids.shape}; expected "
                                f"(k, {len(self.feature_names)}) with k >= 1 for features "
                                f"{self.feature_names}")
        finite = np.isfinite(self.centroids).all(axis=1)
        if not finite.all():  # NaN or infinity, or a float64 value beyond float32
            raise ArtifactError(f"centroids rows {np.flatnonzero(~finite)[:10].tolist()} hold "
                                "values that are not finite float32 numbers")
        # Stable cluster ids (matched to the previous champion); row i answers as cluster_ids[i].
        ids = metadata.get("cluster_ids")
        ids = np.arange(self.k) if ids is None else np.asarray(ids)
        if ids.dtype.kind not in "iu" or ids.shape != (self.k,):
            raise ArtifactError(f"cluster_ids must be {self.k} integers (one per centroid), got "
                                f"{_kind(metadata.get('cluster_ids'))}")
        if len(np.unique(ids)) != self.k:
            raise ArtifactError(f"cluster_ids must be unique, got {ids.tolist()}")
        if ids.min() < -(2**63) or ids.max() >= 2**63:
            raise ArtifactError(f"cluster_ids must fit 64-bit integers, got {ids.tolist()}")
        self.cluster_ids = ids.astype(np.int64)
        threshold = metadata.get("distance_p99")  # absent: no row is out of distribution
        if threshold is not None and (not _finite_number(threshold) or threshold < 0):
            raise ArtifactError(f"distance_p99 must be a finite number >= 0 (the "
                                f"out-of-distribution threshold), got {_kind(threshold)}")
        self.ood_threshold = math.inf if threshold is None else float(threshold)
        #: what a raw row must hold to be scored (:meth:`check_input`)
        self.input_check = _input_check(self.feature_names, metadata)
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
        if not isinstance(expected, dict) or not all(
                isinstance(expected.get(name), str) for name in FILES):
            raise ArtifactError(f"artifact {folder}: {CHECKSUMS} must be an object with a "
                                f"sha256 string for each of {list(FILES)}, got "
                                f"{_kind(expected)}")
        for name in FILES:
            if not (folder / name).is_file():
                raise ArtifactError(f"artifact {folder} lacks {name}")
        for name, actual in artifact_checksums(folder).items():
            if actual != expected[name]:
                raise ArtifactError(
                    f"artifact {folder}: {name} has sha256 {actual[:12]}…, {CHECKSUMS} says "
                    f"{expected[name][:12]}…; refusing a modified artifact")
        try:
            return cls._read(folder)
        except ArtifactError as err:
            raise ArtifactError(f"artifact {folder}: {err}") from err

    @classmethod
    def _read(cls, folder: Path) -> Self:
        """The checked files of a verified folder (errors name the file, not the folder)."""
        try:
            meta = json.loads((folder / METADATA).read_text())
        except (OSError, ValueError) as err:
            raise ArtifactError(f"{METADATA} is not readable JSON: {err}") from err
        if not isinstance(meta, dict):
            raise ArtifactError(f"{METADATA} must be an object, got {_kind(meta)}")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{METADATA} has format_version "
                                f"{_kind(meta.get('format_version'))}; this code reads "
                                f"{FORMAT_VERSION}")
        k = meta.get("k")
        if type(k) is not int or k < 1:
            raise ArtifactError(f"{METADATA} field k must be an integer >= 1, got {_kind(k)}")
        try:
            pre = Preprocessor.from_dict(meta.pop("preprocessing", None))
        except ArtifactError as err:
            raise ArtifactError(f"{METADATA}: {err}") from err
        # The header first: a dtype or shape that is refused is never read (an object array
        # would need pickle; a shape rewritten to 10^12 rows would exhaust memory).
        try:
            with open(folder / CENTROIDS, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError(f"NPY format version {version} is not read here")
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(fh)
        except (OSError, ValueError, EOFError) as err:
            raise ArtifactError(f"{CENTROIDS} is not an NPY array: {err}") from err
        if dtype.kind != "f":
            raise ArtifactError(f"{CENTROIDS} has dtype {dtype}; centroids must be floating "
                                "point (float16/32/64), never objects (pickle)")
        if shape != (k, len(pre.feature_names)):
            raise ArtifactError(f"{CENTROIDS} has shape {shape}; {METADATA} says k={k} and "
                                f"{len(pre.feature_names)} features")
        try:  # never a pickle
            centroids = np.load(folder / CENTROIDS, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise ArtifactError(f"{CENTROIDS} is not a plain numeric NPY array: {err}") from err
        try:
            return cls(centroids, pre, meta)
        except ArtifactError as err:
            raise ArtifactError(f"{METADATA} or {CENTROIDS}: {err}") from err

    def check_input(self, raw: Any) -> np.ndarray:
        """Raw feature rows (DataFrame or (n, d) array) as float64, checked by
        :attr:`input_check`: :class:`InputError` names every row that cannot be scored."""
        rows = _as_float_rows(raw, self.feature_names)
        self.input_check.check(rows)
        return rows

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
