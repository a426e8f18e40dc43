"""A tiny model, an inference app and the routes the server tests share."""

from __future__ import annotations

import threading
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from pipeline import registry
from pipeline.core.settings import FEATURE_NAMES, ServingSettings
from pipeline.data.features import Snapshot
from pipeline.model.artifact import SegmentModel
from pipeline.model.preprocessing import LOG_FEATURES, Preprocessor
from pipeline.serving.app import InferenceApp
from pipeline.serving.lookup import OnlineRows
from pipeline.serving.model import SegmentService

NAME = "customer_segments"
TOKEN, ADMIN = "test-predict-token", "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
INFER = f"/v2/models/{NAME}/infer"
PREDICT = f"/v1/models/{NAME}:predict"


def make_model(snapshot_path, folder, k=4, seed=0) -> SegmentModel:
    frame = Snapshot.load(snapshot_path).frame()
    pre = Preprocessor.fit(frame, FEATURE_NAMES, log_features=LOG_FEATURES)
    x = pre.transform(frame)
    centroids = x[np.random.default_rng(seed).choice(len(x), k, replace=False)]
    return SegmentModel.load(SegmentModel(centroids, pre, {"distance_p99": 4.0}).save(folder))


class GatedLookup:
    """An online store whose reads wait for a gate: a request by customer_id then holds its
    concurrency slot (the slot is taken once the body is read, in the handler) for as long as
    the test wants."""

    def __init__(self, row):
        self.row = np.asarray(row, dtype=np.float64)
        self.gate, self.entered = threading.Event(), threading.Event()

    def fetch(self, ids):
        self.entered.set()
        assert self.gate.wait(30), "the gate was never opened"
        n = len(ids)
        return OnlineRows(np.tile(self.row, (n, 1)), np.ones(n, bool), np.zeros(n, bool),
                          np.zeros(n))


def tiny_model(folder: Path, seed: int = 5, k: int = 4) -> SegmentModel:
    """A model of the real feature table, fitted on lognormal rows, saved and loaded back."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.lognormal(1.0, 1.0, size=(300, len(FEATURE_NAMES))),
                         columns=FEATURE_NAMES)
    pre = Preprocessor.fit(frame, FEATURE_NAMES, log_features=LOG_FEATURES)
    x = pre.transform(frame)
    model = SegmentModel(x[rng.choice(len(x), k, replace=False)], pre, {"distance_p99": 4.0})
    return SegmentModel.load(model.save(folder))


#: make_app's keywords that are the app's own; the others are fields of its ServingSettings.
APP_KEYWORDS = ("loader", "access_log", "tune_gc", "server_version", "prediction_log")


def make_app(model, **kwargs) -> InferenceApp:
    """An app serving ``model`` as version 1 with both tokens; ``kwargs``: ``lookup``, the
    app's own keywords (:data:`APP_KEYWORDS`) and :class:`ServingSettings` fields."""
    service = SegmentService(NAME, lookup=kwargs.pop("lookup", None),
                             max_batch_rows=kwargs.pop("max_batch_rows", 10_000))
    service.load(model, "1")
    own = {key: kwargs.pop(key) for key in APP_KEYWORDS if key in kwargs}
    kwargs.setdefault("max_body_bytes", 8 << 20)
    serving = ServingSettings(serving_token=TOKEN, admin_token=ADMIN, **kwargs)
    return InferenceApp(service, serving, **own)


def register_tiny_model(settings, folder: Path) -> SegmentModel:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(rng.lognormal(1.0, 1.0, size=(300, len(FEATURE_NAMES))),
                         columns=FEATURE_NAMES)
    pre = Preprocessor.fit(frame, FEATURE_NAMES, log_features=LOG_FEATURES)
    model = SegmentModel(pre.transform(frame)[:4], pre, {"distance_p99": 4.0})
    model.save(folder)
    with mlflow.start_run(experiment_id=registry.configure(settings)) as run:
        pass
    version = registry.log_model_version(settings, run.info.run_id, folder, {"seed": 5})
    registry.client(settings).set_registered_model_alias(settings.model_name, "champion",
                                                          version)
    return SegmentModel.load(folder)
