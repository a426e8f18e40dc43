"""The MLflow sink of a monitoring window: one run per window in the monitoring experiment
(:func:`pipeline.registry.monitoring_experiment`), its figures as metrics, where its report is
as tags, and the report's files as artifacts. Re-running a window reuses its run.
"""

from __future__ import annotations

import math
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline import registry
from pipeline.core.io import make_private
from pipeline.core.settings import Settings
from pipeline.monitoring.report import monitoring_dir
from pipeline.promotion.gates import report_url

#: Figures of the window logged as metrics under their own names.
METRICS = ("segment_psi", "distance_ratio", "ood_rate", "low_margin_share", "silhouette")
#: Figures of the streaming shadow logged (as ``shadow_<name>``) with the window's.
SHADOW_METRICS = ("max_shift", "mean_shift", "points")


#: The run's artifact folder holding the window's report files.
REPORT_ARTIFACTS = "report"


def report_files(folder: Path, figures: dict) -> list[Path]:
    """The window's report files: its HTML and JSON, and Evidently's feature drift report when
    the window had enough rows for one."""
    names = [figures["report"], f"{figures['window']}.json", figures.get("features_report")]
    return [folder / name for name in names if name and (folder / name).is_file()]


def report_tags(settings: Settings, figures: dict) -> dict[str, str]:
    """Where the run's report is: ``report``, its path in the reports folder (the path after
    ``/kmeans/reports/`` in the reports app), and ``report_url``, its address in the reports
    app when the reports are served (``KMEANS_REPORTS_URL``), else its file's URI."""
    path = monitoring_dir(settings) / figures["report"]
    relative = path.relative_to(settings.reports_dir).as_posix()
    return {"report": relative, "report_url": report_url(settings, path) or path.as_uri()}


@contextmanager
def window_run(settings: Settings, figures: dict) -> Iterator[str]:
    """One MLflow run per window (the same run again when a window is re-run), in the
    monitoring experiment (:func:`pipeline.registry.monitoring_experiment`); yields its id
    while it is active."""
    import mlflow

    experiment_id = registry.monitoring_experiment(settings)
    found = registry.client(settings).search_runs(
        [experiment_id], f"tags.window = '{figures['window']}'", max_results=1)
    run_id = found[0].info.run_id if found else None
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id,
                          run_name=figures["window"]) as run:
        mlflow.set_tags({"window": figures["window"], "status": figures["status"],
                         "champion_version": figures.get("champion_version", ""),
                         "reasons": "; ".join(figures["reasons"])[:4000],
                         **report_tags(settings, figures)})
        values = {k: figures[k] for k in METRICS if _finite(figures.get(k))}
        share = (figures.get("feature_drift") or {}).get("drift_share")
        if _finite(share):
            values["feature_drift_share"] = share
        values["rows"] = float(figures.get("rows", 0))
        shadow = figures.get("shadow") or {}
        values.update({f"shadow_{k}": float(shadow[k]) for k in SHADOW_METRICS
                       if _finite(shadow.get(k))})
        mlflow.log_metrics(values)
        yield run.info.run_id


def log_report(folder: Path, figures: dict) -> None:
    """The window's report files as artifacts of the active run (under ``report/``), owner-only
    when the artifacts are local files (MLflow copies them with the umask's modes)."""
    import mlflow

    for path in report_files(folder, figures):
        mlflow.log_artifact(str(path), artifact_path=REPORT_ARTIFACTS)
    uri = mlflow.get_artifact_uri(REPORT_ARTIFACTS)
    if uri.startswith("file:"):
        local = Path(urllib.request.url2pathname(urllib.parse.urlparse(uri).path))
        for path in [local, *local.glob("*")]:
            make_private(path)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)

