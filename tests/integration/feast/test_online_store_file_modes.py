"""The Feast side of issue 14's owner-only files: a repo applied and materialized on a home in
tmp_path keeps its folder, online store and registry readable by the owner alone. (The ingest
side is in ``tests/unit/data/test_hardening_ingest.py``.)"""

from __future__ import annotations

import datetime as dt

from pipeline.data import features
from pipeline.data.datagen import generate_lake
from pipeline.data.ingest import ingest_lake
from tests.helpers import clock
from tests.helpers.artifacts import file_mode

START = clock.day(0)




def test_feast_online_store_and_registry_are_owner_only(settings, umask_022):
    generate_lake(settings.lake_dir, n_customers=200, days=1, start=START, seed=5)
    ingest_lake(settings, START, START + dt.timedelta(days=1))
    features.apply_repo(settings)
    features.materialize(settings, clock.at(-31), clock.at(1))
    assert file_mode(settings.feast_dir) == 0o700
    stores = [features.online_db(settings), settings.feast_dir / "registry.db"]
    assert {p: file_mode(p) for p in stores} == dict.fromkeys(stores, 0o600)
