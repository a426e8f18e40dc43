"""Streaming k-means: mini-batch updates with a per-centroid learning rate that forgets.

The update of Sculley (2010, "Web-scale k-means clustering") done one mini-batch at a time,
with the forgetfulness of Spark MLlib's ``StreamingKMeans``: each centre carries a weight,
the weights decay with a half-life (counted in batches or in points, Spark's ``timeUnit``),
and a batch moves each centre to the weighted mean of its old position and the batch's points
assigned to it. For a batch ``x`` and a decay factor ``a = 0.5 ** (t / half_life)``, with ``t``
= 1 per batch (``time_unit="batches"``) or the batch's number of points (``"points"``):

1. assign every point to its nearest centre (squared Euclidean distance, summed feature by
   feature from exact differences; of equal distances the first centre wins, as
   :meth:`pipeline.model.kmeans_segments.SegmentModel.assign_scaled` does);
2. for each centre ``j`` with ``n_j`` points of sum ``s_j``: ``w_old = w_j * a``, ``w_j =
   w_old + n_j``, ``c_j = (c_j * w_old + s_j) / w_j``. The learning rate of centre ``j`` is
   ``n_j / w_j``: with an infinite half-life it is Sculley's ``1 / count`` per point, with a
   finite one the centre keeps tracking a population that moves. A centre that got no point
   keeps its position; only its weight decays.
3. a dying centre is replaced as Spark does: when the smallest weight falls below
   ``dying_ratio`` (1e-8) of the largest, the largest cluster is split in two. Both centres
   take the largest's position, moved by +-1e-14 of each coordinate's magnitude (at least
   1e-14), and half of the two weights' sum each; the next batches pull them apart. (With a
   half-life ``h``, a centre that gets no point dies after about 27 ``h``.)

The state is plain numbers (:meth:`StreamingKMeans.to_dict`, JSON-safe, never a pickle), the
update uses no randomness: the same batches give the same centres.

This module imports nothing from the project (the engine layer stands alone).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

TIME_UNITS = ("batches", "points")
#: Spark's rule: a centre whose weight is below this share of the largest one is dying.
DYING_RATIO = 1e-8
#: Spark's relative move of the two centres that split the largest cluster.
SPLIT_PERTURBATION = 1e-14
FORMAT = "streaming-kmeans/1"
_CHUNK_DOUBLES = 32_768  # a (rows, k) block of squared distances: 256 KiB, stays in cache


class StreamingKMeans:
    """Mini-batch k-means whose centres forget with a half-life (Sculley 2010; Spark's
    ``StreamingKMeans``).

    Parameters
    ----------
    half_life : float, default=math.inf
        Time after which a past point's weight is halved, in ``time_unit``; ``math.inf``:
        nothing is forgotten (Sculley's mini-batch k-means, a running mean per centre).
    time_unit : {"batches", "points"}, default="batches"
        What the half-life counts: batches (each :meth:`update` is one step, whatever its
        size; an empty batch also ages the weights) or points (a batch of ``n`` points ages
        them by ``n``).
    dying_ratio : float, default=1e-8
        A centre whose weight falls below this share of the largest weight is dying: the
        largest cluster is split in two in its place. 0 turns the split off.

    Attributes
    ----------
    centroids_ : ndarray of shape (k, d), float64
    weights_ : ndarray of shape (k,), float64
        The decayed number of points behind each centre.
    n_points_ : int
        Points seen by :meth:`update` since :meth:`initialize`.
    n_batches_ : int
    n_splits_ : int
        Dying centres replaced by a split of the largest cluster.

    Examples
    --------
    >>> model = StreamingKMeans(half_life=1.0).initialize([[0.0], [10.0]], weights=[1, 1])
    >>> model.update([[2.0], [2.0], [12.0]]).centroids_.ravel().tolist()
    [1.6, 11.333333333333334]
    >>> model.weights_.tolist()
    [2.5, 1.5]
    """

    def __init__(self, *, half_life: float = math.inf, time_unit: str = "batches",
                 dying_ratio: float = DYING_RATIO):
        self.half_life = half_life
        self.time_unit = time_unit
        self.dying_ratio = dying_ratio

    # ------------------------------------------------------------ parameters

    def _check_params(self) -> None:
        h = self.half_life
        if (isinstance(h, bool) or not isinstance(h, int | float | np.integer | np.floating)
                or math.isnan(h) or h <= 0):
            raise ValueError(f"half_life={h!r} should be a number > 0 (math.inf: nothing is "
                             "forgotten)")
        if self.time_unit not in TIME_UNITS:
            raise ValueError(f"time_unit={self.time_unit!r} should be one of {TIME_UNITS}")
        r = self.dying_ratio
        if (isinstance(r, bool) or not isinstance(r, int | float | np.integer | np.floating)
                or not 0 <= r < 1):
            raise ValueError(f"dying_ratio={r!r} should be in [0, 1) (0: never split)")

    @property
    def decay_factor(self) -> float:
        """The weight kept per time unit: ``0.5 ** (1 / half_life)`` (Spark's decayFactor)."""
        self._check_params()
        return 1.0 if math.isinf(self.half_life) else 0.5 ** (1.0 / float(self.half_life))

    # ------------------------------------------------------------ state

    def initialize(self, centroids: Any, weights: Any = None) -> StreamingKMeans:
        """Start from ``centroids`` (k, d) with ``weights`` (k,) points behind each (default
        1 each: any batch moves them at once); returns ``self`` (Spark's setInitialCenters).

        Examples
        --------
        >>> StreamingKMeans().initialize([[0.0, 1.0]]).weights_.tolist()
        [1.0]
        """
        self._check_params()
        c = _finite_matrix(centroids, "centroids")
        if len(c) == 0 or c.shape[1] == 0:
            raise ValueError(f"centroids have shape {c.shape}; expected (k, d) with k >= 1 "
                             "and d >= 1")
        if weights is None:
            w = np.ones(len(c))
        else:
            w = _finite_vector(weights, "weights")
            if w.shape != (len(c),):
                raise ValueError(f"weights have shape {w.shape}; expected ({len(c)},), one per "
                                 "centroid")
            if (w < 0).any():
                raise ValueError(f"weights must be >= 0, got {w.tolist()}")
        self.centroids_ = c.copy()
        self.weights_ = w.astype(np.float64).copy()
        self.n_points_ = 0
        self.n_batches_ = 0
        self.n_splits_ = 0
        return self

    def _require_state(self) -> None:
        if not hasattr(self, "centroids_"):
            raise RuntimeError("this StreamingKMeans has no centres yet: call initialize() "
                               "(or from_dict()) first")

    # ------------------------------------------------------------ the update

    def update(self, x: Any) -> StreamingKMeans:
        """Move the centres by one mini-batch ``x`` of shape (n, d); returns ``self``.

        ``x`` must hold finite numbers; a batch of 0 rows moves nothing (in ``batches`` time
        it still ages the weights, as a Spark batch interval without data does).

        Examples
        --------
        >>> model = StreamingKMeans().initialize([[0.0], [10.0]], weights=[1, 1])
        >>> model.update([[1.0], [9.0], [11.0]]).centroids_.ravel().tolist()
        [0.5, 10.0]
        """
        self._require_state()
        self._check_params()
        x = self._rows(x)
        n = len(x)
        k, d = self.centroids_.shape
        steps = 1.0 if self.time_unit == "batches" else float(n)
        discount = self.decay_factor ** steps
        if n:
            labels, _ = self._nearest(x)
            counts = np.bincount(labels, minlength=k).astype(np.float64)
            sums = np.empty((k, d))
            for j in range(d):  # d bincounts beat np.add.at by far
                sums[:, j] = np.bincount(labels, weights=x[:, j], minlength=k)
        else:
            counts, sums = np.zeros(k), np.zeros((k, d))
        kept = self.weights_ * discount
        total = kept + counts
        hit = counts > 0
        self.centroids_[hit] = ((self.centroids_[hit] * kept[hit, None] + sums[hit])
                                / total[hit, None])
        self.weights_ = total
        self.n_points_ += n
        self.n_batches_ += 1
        self._split_dying()
        return self

    def _split_dying(self) -> None:
        """Spark's rule: the smallest weight below ``dying_ratio`` of the largest -> split the
        largest cluster in two, one half taking the dying centre's place."""
        if self.dying_ratio <= 0 or len(self.weights_) < 2:
            return
        largest, smallest = int(self.weights_.argmax()), int(self.weights_.argmin())
        top, low = self.weights_[largest], self.weights_[smallest]
        if not low < self.dying_ratio * top:
            return
        centre = self.centroids_[largest].copy()
        p = SPLIT_PERTURBATION * np.maximum(np.abs(centre), 1.0)
        self.centroids_[largest] = centre + p
        self.centroids_[smallest] = centre - p
        self.weights_[largest] = self.weights_[smallest] = (top + low) / 2.0
        self.n_splits_ += 1

    # ------------------------------------------------------------ scoring

    def predict(self, x: Any) -> np.ndarray:
        """Index of the nearest centre of each row of ``x`` (n, d).

        Examples
        --------
        >>> StreamingKMeans().initialize([[0.0], [10.0]]).predict([[1.0], [8.0]]).tolist()
        [0, 1]
        """
        self._require_state()
        return self._nearest(self._rows(x))[0]

    def inertia(self, x: Any) -> float:
        """Sum of squared distances of the rows of ``x`` to their nearest centre.

        Examples
        --------
        >>> StreamingKMeans().initialize([[0.0], [10.0]]).inertia([[1.0], [8.0]])
        5.0
        """
        self._require_state()
        return float(self._nearest(self._rows(x))[1].sum())

    def _rows(self, x: Any) -> np.ndarray:
        d = self.centroids_.shape[1]
        rows = _finite_matrix(x, "x", columns=d)
        return rows

    def _nearest(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centre and its squared distance per row, in chunks of rows."""
        n, (k, d) = len(x), self.centroids_.shape
        labels = np.empty(n, np.int64)
        best = np.empty(n, np.float64)
        ct = np.ascontiguousarray(self.centroids_.T)
        xt = np.ascontiguousarray(x.T)
        step = max(64, _CHUNK_DOUBLES // k)
        acc = np.empty((min(n, step), k))
        tmp = np.empty_like(acc)
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            a, t = acc[:hi - lo], tmp[:hi - lo]
            np.subtract(xt[0, lo:hi, None], ct[0], out=a)
            np.multiply(a, a, out=a)
            for j in range(1, d):
                np.subtract(xt[j, lo:hi, None], ct[j], out=t)
                np.multiply(t, t, out=t)
                a += t
            b = a.argmin(axis=1)
            labels[lo:hi], best[lo:hi] = b, a[np.arange(hi - lo), b]
        return labels, best

    # ------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        """The parameters and the state as JSON-safe values (an infinite half-life is None).

        Examples
        --------
        >>> m = StreamingKMeans(half_life=5.0).initialize([[1.0]])
        >>> StreamingKMeans.from_dict(m.to_dict()).to_dict() == m.to_dict()
        True
        """
        self._require_state()
        return {"format": FORMAT,
                "half_life": None if math.isinf(self.half_life) else float(self.half_life),
                "time_unit": self.time_unit, "dying_ratio": float(self.dying_ratio),
                "centroids": self.centroids_.tolist(), "weights": self.weights_.tolist(),
                "n_points": int(self.n_points_), "n_batches": int(self.n_batches_),
                "n_splits": int(self.n_splits_)}

    @classmethod
    def from_dict(cls, data: Any) -> StreamingKMeans:
        """A model from :meth:`to_dict`'s output, checked: a ``ValueError`` names the first
        field that is missing or wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"a streaming k-means state must be an object, got "
                             f"{type(data).__name__}")
        if data.get("format") != FORMAT:
            raise ValueError(f"state format {data.get('format')!r}; this code reads {FORMAT!r}")
        missing = sorted({"half_life", "time_unit", "dying_ratio", "centroids", "weights",
                          "n_points", "n_batches", "n_splits"} - set(data))
        if missing:
            raise ValueError(f"streaming k-means state lacks {missing}")
        half_life = math.inf if data["half_life"] is None else data["half_life"]
        model = cls(half_life=half_life, time_unit=data["time_unit"],
                    dying_ratio=data["dying_ratio"])
        model.initialize(data["centroids"], data["weights"])
        for name in ("n_points", "n_batches", "n_splits"):
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} should be an integer >= 0")
            setattr(model, f"{name}_", value)
        return model


def _finite_matrix(data: Any, name: str, *, columns: int | None = None) -> np.ndarray:
    """``data`` as a float64 (n, d) array of finite numbers, or a ValueError that says why."""
    try:
        arr = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a 2-D array of numbers: {err}") from err
    if arr.ndim != 2:
        want = f"(n, {columns})" if columns is not None else "(n, d)"
        raise ValueError(f"{name} has shape {arr.shape}; expected {want}")
    if columns is not None and arr.shape[1] != columns:
        raise ValueError(f"{name} has shape {arr.shape}; expected (n, {columns}), one column "
                         "per feature of the centres")
    bad = ~np.isfinite(arr)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        value = float(arr[row, col])
        raise ValueError(f"{name} holds {int(bad.sum())} values that are not finite (NaN or "
                         f"infinity), the first at row {row}, column {col}: {value!r}")
    return arr


def _finite_vector(data: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a 1-D array of numbers: {err}") from err
    if arr.ndim != 1:
        raise ValueError(f"{name} has shape {arr.shape}; expected a 1-D array")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds values that are not finite: {arr.tolist()}")
    return arr
