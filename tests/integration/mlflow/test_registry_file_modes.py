"""The MLflow side of issue 14's owner-only files: a real registry on a home in tmp_path keeps
its store, its artifacts, the alias audit trail and the alias lock readable by the owner alone.
(The ingest side is in ``tests/unit/data/test_hardening_ingest.py``.)"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

from pipeline import registry
from pipeline.core.settings import FEATURE_NAMES
from pipeline.model.artifact import SegmentModel
from pipeline.model.preprocessing import LOG_FEATURES, Preprocessor
from tests.helpers.artifacts import file_mode


def test_mlflow_store_artifacts_audit_trail_and_lock_are_owner_only(settings, tmp_path,
                                                                    umask_022):
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(rng.lognormal(1.0, 1.0, size=(300, len(FEATURE_NAMES))),
                         columns=FEATURE_NAMES)
    pre = Preprocessor.fit(frame, FEATURE_NAMES, log_features=LOG_FEATURES)
    folder = SegmentModel(pre.transform(frame)[:4], pre, {"distance_p99": 4.0}).save(
        tmp_path / "artifact")
    with mlflow.start_run(experiment_id=registry.configure(settings)) as run:
        pass
    version = registry.log_model_version(settings, run.info.run_id, folder, {"seed": 5})
    registry.register_challenger(settings, version, reason="file modes", actor="test")

    db = registry.sqlite_store(settings)
    assert db is not None and file_mode(db) == 0o600
    assert file_mode(settings.artifact_root) == 0o700
    model_files = [p for p in settings.artifact_root.rglob("*") if p.is_file()]
    assert any(p.name == "MLmodel" for p in model_files)
    assert {p: file_mode(p) for p in model_files} == dict.fromkeys(model_files, 0o600)
    assert file_mode(registry.audit_path(settings)) == 0o600
    assert file_mode(registry.audit_path(settings).parent) == 0o700
    assert [e["alias"] for e in registry.read_audit(settings)] == ["challenger", "champion"]
    assert file_mode(registry.lock_path(settings)) == 0o600
