"""Alerts and dashboards for what really exists: the rules pass promtool's check and unit
tests; every metric the rules and the Grafana dashboard name is exported by the server, the
prediction log or the monitoring exporter; and a real Prometheus (Debian's, on loopback)
scrapes the exporter and fires the drift alert."""

from __future__ import annotations

import datetime as dt
import json
import re
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
NAME = re.compile(r"\bkmeans_[a-z0-9_]+")

needs_prometheus = pytest.mark.skipif(
    not Path(PROMETHEUS).exists(),
    reason="Debian's prometheus package is missing (make test installs it)")


def _spec(folder: Path, *, instant: bool = False) -> Path:
    """The PrometheusRule's groups as a plain rule file; ``instant``: every ``for`` 0s."""
    spec = yaml.safe_load(RULES.read_text())["spec"]
    if instant:
        for group in spec["groups"]:
            group["interval"] = "1s"
            for rule in group["rules"]:
                rule["for"] = "0s"
    path = folder / "prometheus-rules.spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@needs_prometheus
def test_rules_pass_promtool_check_and_unit_tests(tmp_path):
    _spec(tmp_path)
    shutil.copy(MONITORING / "prometheus-rules.test.yaml", tmp_path)
    for args in (["check", "rules", "prometheus-rules.spec.yaml"],
                 ["test", "rules", "prometheus-rules.test.yaml"]):
        done = subprocess.run([PROMTOOL, *args], cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout + done.stderr


def _figures(status: str = "drift") -> dict:
    end = at(DAYS, hours=15)  # a monitored hour after the sample days (no rule reads it)
    return {"window": "w", "status": status, "reasons": [], "champion_version": "3",
            "start": (end - dt.timedelta(hours=1)).isoformat(), "end": end.isoformat(),
            "rows": 4000, "feature_drift": {"drift_share": 0.5}, "segment_psi": 0.4,
            "distance_ratio": 1.6, "novelty_rate": 0.2, "low_margin_share": 0.1,
            "silhouette": 0.3, "clusters": [{"cluster": 0, "share": 0.7},
                                            {"cluster": 1, "share": 0.3}],
            "shadow": {"max_shift": 0.4, "mean_shift": 0.2, "points": 20000,
                       "clusters": [{"cluster": 0, "shift": 0.4},
                                    {"cluster": 1, "shift": 0.0}]}}


def _exported_names(settings) -> set[str]:
    """Every series name the server (with its prediction log) and the exporter produce."""
    from pipeline.monitoring.window import prometheus_path, write_prometheus
    from pipeline.serving.app import InferenceApp
    from pipeline.serving.model import SegmentService
    from pipeline.serving.predlog import PredictionLog

    app = InferenceApp(SegmentService("m"), prediction_log=PredictionLog(
        settings.home / "p", ["a"]))
    names = set()
    for family in app.metrics.registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        names.update(family.name + s for s in suffixes.get(family.type, [""]))
    write_prometheus(settings, _figures())
    text = prometheus_path(settings).read_text()
    names.update(line.split()[2] for line in text.splitlines() if line.startswith("# TYPE"))
    return names


def test_every_metric_the_rules_and_dashboard_name_is_exported(tmp_path):
    exported = _exported_names(make_settings(tmp_path))
    rules = yaml.safe_load(RULES.read_text())["spec"]["groups"]
    in_rules = {n for g in rules for r in g["rules"] for n in NAME.findall(r["expr"])}
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    in_dashboard = {n for e in exprs for n in NAME.findall(e)}
    assert in_rules and in_dashboard
    assert not in_rules - exported, f"rules name unexported metrics: {in_rules - exported}"
    assert not in_dashboard - exported, f"unexported in the dashboard: {in_dashboard - exported}"
    assert {"kmeans_segment_psi", "kmeans_distance_ratio", "kmeans_drift_share",
            "kmeans_prediction_log_rows_total"} <= in_rules


@needs_prometheus
def test_a_real_prometheus_scrapes_the_exporter_and_fires_the_drift_alert(tmp_path):
    from pipeline.monitoring.exporter import serve_in_thread
    from pipeline.monitoring.window import prometheus_path, write_prometheus

    settings = make_settings(tmp_path / "home")
    write_prometheus(settings, _figures())
    exporter, url = serve_in_thread(prometheus_path(settings))
    port = free_port()
    rules = _spec(tmp_path, instant=True)
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
                       alive=died, ignore=(httpx.HTTPError,))
        except WaitTimeout as err:
            raise AssertionError(f"{err}\n{log_tail(log)}") from None
        firing = {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}
        assert {"KmeansDatasetDrift", "KmeansSegmentSharePSIHigh", "KmeansDistanceRatioHigh",
                "KmeansFarPointShareHigh"} <= firing, (firing, log_tail(log))
        assert "KmeansDriftMonitorAbsent" not in firing
        up = httpx.get(f"http://127.0.0.1:{port}/api/v1/query",
                       params={"query": 'kmeans_drift_share{model_version="3"}'}).json()
        assert float(up["data"]["result"][0]["value"][1]) == 0.5
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        exporter.shutdown()
