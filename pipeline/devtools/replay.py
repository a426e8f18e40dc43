"""Replay synthetic traffic through a live inference server and monitor each window: how often
the monitoring cries wolf on stationary data, and how many windows it takes to see each kind of
drift the generator can inject (:class:`pipeline.data.datagen.Drift`).

Every window's rows are sent to the server over HTTP (V2 infer, batches of ``batch`` rows), so
they go through the prediction log exactly as production traffic does; then each window is
computed by :func:`pipeline.monitoring.window.monitor_window` (reports, MLflow run, index).
``benchmarks/bench_monitoring.py`` runs it and writes the figures; the tests run it smaller.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

import httpx
import numpy as np
import pandas as pd

from pipeline.core.predictions import read_window
from pipeline.core.settings import FEATURE_NAMES, Settings
from pipeline.data.datagen import DRIFT_KINDS, Drift, period_rows
from pipeline.monitoring.window import monitor_window


@dataclass(frozen=True)
class Sent:
    start: dt.datetime
    end: dt.datetime
    rows: int
    failed: int


def post_rows(client: httpx.Client, model: str, rows: np.ndarray, *, batch: int = 200) -> int:
    """Send ``rows`` (n x features, NaN for missing) for assignment; returns how many requests
    failed (any status but 200)."""
    failed = 0
    for lo in range(0, len(rows), batch):
        part = rows[lo:lo + batch]
        data = [None if v != v else v for v in part.ravel().tolist()]  # NaN: null
        reply = client.post(f"/v2/models/{model}/infer", json={"inputs": [{
            "name": "features", "datatype": "FP64", "shape": list(part.shape), "data": data}]})
        failed += reply.status_code != 200
    return failed


def send_windows(settings: Settings, url: str, windows: list[pd.DataFrame], *,
                 token: str | None = None, batch: int = 200) -> list[Sent]:
    """Send each frame as one window of traffic; the windows are consecutive, disjoint time
    intervals of the prediction log. Returns once the log holds every sent row."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    sent = []
    with httpx.Client(base_url=url, timeout=60, headers=headers) as client:
        start = dt.datetime.now(dt.UTC)
        for frame in windows:
            failed = post_rows(client, settings.model_name,
                               frame[FEATURE_NAMES].to_numpy(dtype=np.float64), batch=batch)
            end = dt.datetime.now(dt.UTC)
            sent.append(Sent(start, end, len(frame), failed))
            start = end
    _wait_logged(settings, sent[0].start, sent[-1].end, sum(s.rows for s in sent))
    return sent


def _wait_logged(settings: Settings, start: dt.datetime, end: dt.datetime, rows: int,
                 timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    wanted = rows * settings.serving.prediction_log_sample_rate
    while time.monotonic() < deadline:
        table = read_window(settings.predictions_dir, start, end)
        if table is not None and table.num_rows >= wanted:
            return
        time.sleep(0.2)
    raise TimeoutError(f"the prediction log under {settings.predictions_dir} did not receive "
                       f"{rows} rows within {timeout:g} s (is prediction_log_sample_rate < 1?)")


def sensitivity(settings: Settings, url: str, customers: pd.DataFrame, *, seed: int,
                stationary: int = 20, per_kind: int = 6, kinds=DRIFT_KINDS,
                token: str | None = None) -> dict:
    """``stationary`` windows of undrifted traffic, then ``per_kind`` windows of each drift
    kind (drift from the first of them on); each window monitored. Returns the false alarms,
    the detection delay per kind (windows before the first flagged one; None: never flagged)
    and every window's status and reasons."""
    day = dt.date(2030, 1, 1)  # the generator's timestamps; the server does not read them
    frames = [period_rows(customers, day, period=1000 + i, seed=seed) for i in range(stationary)]
    plan = ["stationary"] * stationary
    for n, kind in enumerate(kinds):
        first = 2000 + 100 * n  # the drift starts with the kind's first window
        frames += [period_rows(customers, day, period=first + i, seed=seed,
                               drift=Drift(kind, start=first)) for i in range(per_kind)]
        plan += [kind] * per_kind
    sent = send_windows(settings, url, frames, token=token)
    windows = []
    for kind, s in zip(plan, sent, strict=True):
        figures = monitor_window(settings, s.start, s.end)
        windows.append({"kind": kind, "window": figures["window"], "rows": figures["rows"],
                        "failed_requests": s.failed, "status": figures["status"],
                        "reasons": figures["reasons"],
                        **{k: figures.get(k) for k in ("segment_psi", "distance_ratio",
                                                       "ood_rate", "low_margin_share")},
                        "feature_drift_share": (figures.get("feature_drift") or {}).get(
                            "drift_share")})
    calm = [w for w in windows if w["kind"] == "stationary"]
    alarms = sum(w["status"] == "drift" for w in calm)
    delays: dict[str, int | None] = {}
    for kind in kinds:
        flags = [w["status"] == "drift" for w in windows if w["kind"] == kind]
        delays[kind] = flags.index(True) if True in flags else None
    return {"stationary_windows": len(calm), "false_alarms": alarms,
            "false_alarm_rate": alarms / len(calm) if calm else None,
            "detection_delay_windows": delays, "per_kind_windows": per_kind,
            "failed_requests": sum(s.failed for s in sent), "windows": windows}
