"""Homes for the tests: settings on a folder, sample data landed, a champion trained.

Every date is the tests' calendar (``tests.helpers.clock``), relative to today.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from functools import cache
from pathlib import Path

from tests.helpers.clock import BEGIN, DAYS, END, START


def make_settings(home: Path, **overrides):
    """The platform's settings on ``home`` (``overrides``: settings by field name)."""
    from pipeline.core.settings import load_settings

    return load_settings(home=home, **overrides)


@cache
def _empty_mlflow_store() -> Path:
    """An empty MLflow SQLite store with every migration applied, made once per process."""
    from mlflow import MlflowClient

    path = Path(tempfile.mkdtemp(prefix="kmeans-mlflow-template-")) / "mlflow.db"
    uri = f"sqlite:///{path}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.search_experiments()
    client.search_registered_models()
    return path


def seed_mlflow_store(settings) -> None:
    """Give a new home of the embedded default a migrated, empty MLflow store (owner-only, as
    :func:`pipeline.registry.configure` makes it): MLflow's migrations take seconds for every
    new store, a copy milliseconds. A home that has a store keeps it."""
    from pipeline import registry

    db = registry.sqlite_store(settings)
    if db is None or db.exists():
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_empty_mlflow_store(), db)
    os.chmod(db, 0o600)


def shifted(frame):
    """Customers who spend three times as much, browse twice as much, wait twice as long between
    orders and stayed a year longer: still valid data, another population (6 of 12 features
    drift), with the same segment structure (shifts in each feature's model space)."""
    return frame.assign(total_spend_30d=frame.total_spend_30d * 3,
                        avg_order_value=frame.avg_order_value * 3,
                        sessions_30d=frame.sessions_30d * 2,
                        categories_browsed_30d=frame.categories_browsed_30d + 6,
                        tenure_days=frame.tenure_days + 365,
                        days_since_last_order=frame.days_since_last_order * 2)


def land_sample(root: Path, *, customers: int = 1200, seed: int = 17, **overrides):
    """A home with the sample lake (``customers`` x the calendar's days) landed and the Feast
    repo applied; its settings."""
    from pipeline.data import features
    from pipeline.data.datagen import generate_lake
    from pipeline.data.ingest import ingest_lake

    settings = make_settings(root, **overrides)
    generate_lake(settings.lake_dir, n_customers=customers, start=START, days=DAYS, seed=seed)
    ingest_lake(settings, BEGIN.date(), END.date())
    features.apply_repo(settings)
    return settings


def train_champion(root: Path, *, customers: int = 1200, seed: int = 17, k: int = 4,
                   **overrides):
    """A home with sample data landed, the Feast repo applied and a k-means champion (version
    1) trained on it in-process and registered; its settings (``overrides``: more settings)."""
    settings = land_sample(root, customers=customers, seed=seed, **overrides)
    seed_mlflow_store(settings)
    train_and_register(settings, BEGIN, END, k=k)
    return settings


def train_and_register(settings, begin, end, *, k: int = 4) -> dict:
    """A k-means model trained in-process on the snapshot of [begin, end) and registered (the
    first version becomes champion, later ones challenger); what ``register`` returns."""
    from pipeline.data import features
    from pipeline.promotion.register import register
    from pipeline.training import stages

    snap = features.training_snapshot(settings, begin, end)
    trained = stages.train(settings, snap.path, {"k_min": k, "k_max": k, "engine": "local",
                                                 "max_iter": 30, "seed": 3})
    return register(settings, trained["run_id"])
