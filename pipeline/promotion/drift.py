"""Data drift of a new training snapshot against the champion's reference data (Evidently).

Every registered model keeps a reference sample of the snapshot it was trained on, as the run
artifact ``reference/features.parquet`` (feature columns only, no customer ids). The drift gate
compares the next snapshot with the champion's sample column by column: normalised Wasserstein
distance, a column drifts above ``drift_column_threshold``, the same test the drift monitor
uses (``monitoring/drift.yaml``), whatever the sample size.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pandas as pd

from pipeline import registry
from pipeline.core.settings import FEATURE_NAMES, Settings

log = logging.getLogger(__name__)

REFERENCE_DIR = "reference"
REFERENCE_FILE = "features.parquet"
METHOD = "wasserstein"


def reference_sample(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """A seeded sample of at most ``rows`` rows of the feature columns."""
    missing = [c for c in FEATURE_NAMES if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks feature columns {missing}")
    features = frame[FEATURE_NAMES]
    if len(features) > rows:
        features = features.sample(rows, random_state=seed).sort_index()
    return features.reset_index(drop=True)


def log_reference(settings: Settings, run_id: str, frame: pd.DataFrame, seed: int) -> str:
    """Keep a reference sample of ``frame`` with the run; returns its ``runs:/`` URI."""

    sample = reference_sample(frame, settings.gates.drift_sample_rows, seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / REFERENCE_FILE
        sample.to_parquet(path, index=False)
        registry.client(settings).log_artifact(run_id, str(path), artifact_path=REFERENCE_DIR)
    return f"runs:/{run_id}/{REFERENCE_DIR}/{REFERENCE_FILE}"


def load_reference(settings: Settings, run_id: str) -> pd.DataFrame | None:
    """The reference sample kept with a run, or None if the run has none (a model registered
    before reference samples were kept)."""
    import mlflow

    names = {a.path for a in registry.client(settings).list_artifacts(run_id, REFERENCE_DIR)}
    if f"{REFERENCE_DIR}/{REFERENCE_FILE}" not in names:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f"{REFERENCE_DIR}/{REFERENCE_FILE}", dst_path=tmp)
        return pd.read_parquet(local)


def column_drift(current: pd.DataFrame, reference: pd.DataFrame, html_path: Path, *,
                 column_threshold: float, share_threshold: float) -> dict:
    """Evidently's data drift preset on the feature columns; writes the HTML report.

    Returns the figures: per-column distance, the drifted columns (distance above
    ``column_threshold``), their share, the sample sizes and the report's path.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=FEATURE_NAMES)
    report = Report([DataDriftPreset(method=METHOD, threshold=column_threshold,
                                     drift_share=share_threshold)])
    result = report.run(Dataset.from_pandas(current[FEATURE_NAMES], data_definition=definition),
                        Dataset.from_pandas(reference[FEATURE_NAMES],
                                            data_definition=definition))
    html_path.parent.mkdir(parents=True, exist_ok=True)
    result.save_html(str(html_path))
    scores = _column_scores(result.dict())
    if set(scores) != set(FEATURE_NAMES):
        raise RuntimeError(f"Evidently scored columns {sorted(scores)}, expected {FEATURE_NAMES}")
    drifted = sorted((c for c, v in scores.items() if v > column_threshold),
                     key=lambda c: -scores[c])
    return {
        "method": METHOD, "column_threshold": column_threshold,
        "share_threshold": share_threshold, "columns": len(scores),
        "drifted_columns": drifted, "drift_share": len(drifted) / len(scores),
        "scores": {c: round(scores[c], 6) for c in FEATURE_NAMES},
        "current_rows": len(current), "reference_rows": len(reference),
        "report": str(html_path),
    }


def _column_scores(report: dict) -> dict[str, float]:
    """Per-column drift scores from Evidently's report dict (its ValueDrift metrics)."""
    return {m["config"]["column"]: float(m["value"]) for m in report["metrics"]
            if m["config"].get("type", "").endswith(":ValueDrift")}
