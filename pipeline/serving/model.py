"""The served model: load, ready, predict (by feature vectors or by customer id)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from pipeline.artifact import SegmentModel
from pipeline.serving.errors import InvalidInput, NotReady

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    cluster: list[int]
    distance: list[float | None]
    runner_up: list[int]
    margin: list[float | None]
    ood: list[bool]
    error: list[str]
    version: str

    def rows(self) -> list[dict]:
        out = []
        for i in range(len(self.cluster)):
            if self.error[i]:
                out.append({"error": self.error[i], "model_version": self.version})
            else:
                out.append({"cluster": self.cluster[i], "distance": self.distance[i],
                            "runner_up": self.runner_up[i], "margin": self.margin[i],
                            "ood": self.ood[i], "model_version": self.version})
        return out


class SegmentPredictor:
    """One named model with a loaded version; thread-safe swap of the version."""

    def __init__(self, name: str, *, feature_store=None, feature_service: str | None = None,
                 max_batch_rows: int = 10_000):
        self.name = name
        self.model: SegmentModel | None = None
        self.version: str | None = None
        self.feature_store = feature_store
        self.feature_service = feature_service
        self.max_batch_rows = max_batch_rows
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.model is not None

    def load(self, model: SegmentModel, version: str) -> None:
        with self._lock:
            self.model, self.version = model, str(version)
        log.info("model %s version %s loaded (k=%d)", self.name, version, model.k)

    def _current(self) -> tuple[SegmentModel, str]:
        model, version = self.model, self.version
        if model is None:
            raise NotReady(f"model {self.name!r} is not loaded yet")
        return model, version

    def predict_vectors(self, x: np.ndarray) -> Prediction:
        model, version = self._current()
        width = len(model.feature_names)
        if x.ndim != 2 or x.shape[1] != width:
            raise InvalidInput(f"features have shape {list(x.shape)}; this model takes "
                               f"[n, {width}] in the order {model.feature_names}")
        self._check_rows(len(x))
        if np.isinf(x).any():
            bad = sorted({int(i) for i in np.argwhere(np.isinf(x))[:, 0]})[:5]
            raise InvalidInput(f"features contain infinity in rows {bad}; values must be finite "
                               "numbers (null marks a missing value)")
        res = model.assign(x)
        n = len(x)
        return Prediction(res.cluster.astype(int).tolist(), res.distance.astype(float).tolist(),
                          res.runner_up.astype(int).tolist(), res.margin.astype(float).tolist(),
                          res.ood.astype(bool).tolist(), [""] * n, version)

    def predict_entities(self, ids: list[int]) -> Prediction:
        model, version = self._current()
        self._check_rows(len(ids))
        if self.feature_store is None:
            raise NotReady("no Feast online store is configured for lookups by customer_id")
        from pipeline.features import online_features

        frame = online_features(self.feature_store, self.feature_service, ids)
        values = frame[model.feature_names].to_numpy(dtype=np.float64)
        unknown = np.isnan(values).all(axis=1)
        pred = self.predict_vectors(np.where(unknown[:, None], 0.0, values))
        for i in np.flatnonzero(unknown):
            pred.cluster[i], pred.runner_up[i] = -1, -1
            pred.distance[i] = pred.margin[i] = None
            pred.ood[i] = False
            pred.error[i] = f"customer_id {ids[i]} has no online features"
        return pred

    def _check_rows(self, n: int) -> None:
        if n == 0:
            raise InvalidInput("the batch is empty; send at least 1 row")
        if n > self.max_batch_rows:
            raise InvalidInput(f"the batch has {n} rows; at most {self.max_batch_rows} allowed")
