"""The alerts run: the rules file passes promtool's check and unit tests as committed, the
Prometheus configuration passes promtool's, and a real Prometheus (Debian's, on loopback)
scrapes the exporter and fires the drift alerts. That every series the rules and the dashboard
name is exported, and every threshold is its setting's, is shown without a service by
tests/unit/monitoring/test_alerts.py."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from pipeline.core.settings import PROJECT_ROOT
from tests.helpers.clock import DAYS, at
from tests.helpers.homes import make_settings
from tests.helpers.processes import free_port, log_tail
from tests.helpers.waiting import WaitTimeout, wait_until

MONITORING = PROJECT_ROOT / "monitoring"
RULES = MONITORING / "prometheus-rules.yaml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"

needs_prometheus = pytest.mark.skipif(
    not Path(PROMETHEUS).exists(),
    reason="Debian's prometheus package is missing (make test installs it)")


def _instant(folder: Path) -> Path:
    """The rules file with every ``for`` 0s and groups evaluated each second."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            rule["for"] = "0s"
    path = folder / "prometheus-rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


@needs_prometheus
def test_the_committed_files_pass_promtool_check_and_unit_tests():
    """As committed, from their folder: the configuration loads the rules file itself (14
    rules, none lost to an extraction step) and every alert's cases pass."""
    for args in (["check", "config", "prometheus.yml"],
                 ["check", "rules", "prometheus-rules.yaml"],
                 ["test", "rules", "prometheus-rules.test.yaml"]):
        done = subprocess.run([PROMTOOL, *args], cwd=MONITORING, capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout + done.stderr
        if args[0] == "check":
            assert "SUCCESS: 14 rules found" in done.stdout, done.stdout


def _figures(status: str = "drift") -> dict:
    end = at(DAYS, hours=15)  # a monitored hour after the sample days (no rule reads it)
    return {"window": "w", "status": status, "reasons": [], "champion_version": "3",
            "start": (end - dt.timedelta(hours=1)).isoformat(), "end": end.isoformat(),
            "rows": 4000, "feature_drift": {"drift_share": 0.5}, "segment_psi": 0.4,
            "distance_ratio": 1.6, "ood_rate": 0.2, "low_margin_share": 0.1,
            "silhouette": 0.3, "clusters": [{"cluster": 0, "share": 0.7},
                                            {"cluster": 1, "share": 0.3}],
            "shadow": {"max_shift": 0.4, "mean_shift": 0.2, "points": 20000,
                       "clusters": [{"cluster": 0, "shift": 0.4},
                                    {"cluster": 1, "shift": 0.0}]}}


@needs_prometheus
def test_a_real_prometheus_scrapes_the_exporter_and_fires_the_drift_alert(tmp_path):
    from pipeline.monitoring.exporter import serve_in_thread
    from pipeline.monitoring.exposition import prometheus_path, write_prometheus

    settings = make_settings(tmp_path / "home")
    write_prometheus(settings, _figures())
    exporter, url = serve_in_thread(prometheus_path(settings))
    port = free_port()
    rules = _instant(tmp_path)
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "kmeans-monitoring", "static_configs": [
            {"targets": [url.removeprefix("http://")]}]}]}))
    log = tmp_path / "prometheus.log"
    with log.open("w") as out:
        proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}",
                                 f"--storage.tsdb.path={tmp_path / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=out, stderr=subprocess.STDOUT)
    alerts: list[dict] = []

    def fired() -> bool:
        alerts[:] = httpx.get(f"http://127.0.0.1:{port}/api/v1/alerts",
                              timeout=5).json()["data"]["alerts"]
        return {"KmeansDatasetDrift", "KmeansDistanceRatioHigh"} <= {
            a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}

    def died() -> str | None:
        code = proc.poll()
        return None if code is None else f"prometheus exited {code}: {log_tail(log)}"

    try:
        try:  # progress: an alert that appears or moves from pending to firing
            wait_until(fired, 90, "Prometheus firing the drift alerts", interval=1,
                       progress=lambda: tuple(sorted((a["labels"]["alertname"], a["state"])
                                                     for a in alerts)),
                       # ValueError: a starting Prometheus answers 503 in plain text
                       alive=died, ignore=(httpx.HTTPError, ValueError))
        except WaitTimeout as err:
            raise AssertionError(f"{err}\n{log_tail(log)}") from None
        firing = {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}
        assert {"KmeansDatasetDrift", "KmeansSegmentSharePSIHigh", "KmeansDistanceRatioHigh",
                "KmeansWindowOODRateHigh"} <= firing, (firing, log_tail(log))
        assert "KmeansDriftMonitorAbsent" not in firing
        up = httpx.get(f"http://127.0.0.1:{port}/api/v1/query",
                       params={"query": 'kmeans_drift_share{model_version="3"}'}).json()
        assert float(up["data"]["result"][0]["value"][1]) == 0.5
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        exporter.shutdown()
