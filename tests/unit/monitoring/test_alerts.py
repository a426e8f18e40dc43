"""The monitoring files say what the code says: the committed rules, their promtool tests and
Prometheus' configuration are what the renderer produces; every threshold in the rules and the
Grafana dashboard is the setting the automation acts on (or a declared figure); every series
they name is exported by a registry (collected from instances, not from a list); every alert
has a promtool case that fires it and one just under its threshold, and a runbook section."""

from __future__ import annotations

import inspect
import json
import re
import shutil
import subprocess

import pytest
import yaml
from prometheus_client import CollectorRegistry

from pipeline import cli
from pipeline.core.settings import DEFAULT_PORTS, setting_fields
from pipeline.monitoring import alert_tests, alerts, exporter, render
from pipeline.monitoring.exposition import WindowMetrics
from pipeline.serving.metrics import Metrics
from pipeline.serving.predlog import PredictionLog
from pipeline.serving.routes import ROUTES
from tests.helpers.processes import REPO

MONITORING = REPO / "monitoring"
NAME = re.compile(r"\bkmeans_[a-z0-9_]+")
#: What each alert compares against, stated independently of the declaration: the settings
#: the automation acts on (KMEANS_<NAME>).
ACTS_ON = {
    "KmeansHighServerErrorRate": "watch_max_error_rate",
    "KmeansOODShareHigh": "monitor_max_ood_rate",
    "KmeansWindowOODRateHigh": "monitor_max_ood_rate",
    "KmeansDatasetDrift": "drift_share_threshold",
    "KmeansSegmentSharePSIHigh": "monitor_max_segment_psi",
    "KmeansDistanceRatioHigh": "monitor_max_distance_ratio",
    "KmeansShadowCentroidShift": "monitor_max_shadow_shift",
}


def _exported(tmp_path) -> set[str]:
    """Every series name the server, its prediction log and the monitoring exporter export,
    from instances of their registries."""
    server = Metrics().registry
    log = CollectorRegistry()
    for collector in PredictionLog(tmp_path / "log", ["a"]).collectors:
        log.register(collector)
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    names = set()
    for registry in (server, log, WindowMetrics().registry):
        for family in registry.collect():
            names.update(family.name + s for s in suffixes.get(family.type, [""]))
    return names


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load((MONITORING / "prometheus-rules.yaml").read_text())[
        "groups"] for r in g["rules"]]


def _dashboard() -> dict:
    return json.loads((MONITORING / "grafana-dashboard.json").read_text())


def _numbers(expr: str) -> set[float]:
    """The numeric literals of a PromQL expression: not durations (``[5m]``), not inside
    label matchers or strings (``status=~"5.."``)."""
    bare = re.sub(r'"[^"]*"', '""', expr)
    bare = re.sub(r"\[[^\]]*\]", "[]", bare)
    return {float(n) for n in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", bare)}


def test_committed_files_are_what_the_renderer_produces():
    assert render.stale(REPO) == [], "re-render: python -m pipeline.monitoring.render"


def test_the_rendered_files_read_back_as_the_declaration():
    assert {a.name for a in alerts.ALERTS} == {r["alert"] for r in _rules()}
    assert len(alerts.ALERTS) == 14
    crd = yaml.safe_load((REPO / render.RULES_CRD).read_text())
    assert crd["kind"] == "PrometheusRule" and crd["spec"]["groups"] == alerts.groups()
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    # loaded as is: no extraction step between the rules and Prometheus
    assert config["rule_files"] == ["prometheus-rules.yaml"]
    targets = {c["job_name"]: c["static_configs"][0]["targets"][0]
               for c in config["scrape_configs"]}
    assert targets["kmeans-serving"].endswith(f":{DEFAULT_PORTS['prod_serving']}")
    assert targets["kmeans-serving"].split(":")[1] != str(DEFAULT_PORTS["airflow"])
    exporter_default = inspect.signature(cli.monitor_exporter).parameters["port"].default
    assert targets["kmeans-monitoring"].endswith(f":{exporter.EXPORTER_PORT}")
    assert exporter_default == exporter.EXPORTER_PORT


@pytest.mark.parametrize("alert", alerts.ALERTS, ids=lambda a: a.name)
def test_every_literal_of_a_rule_is_a_declared_threshold(alert):
    rule = {r["alert"]: r for r in _rules()}[alert.name]
    declared = {t.value for t in alert.thresholds}
    assert _numbers(rule["expr"]) <= declared | {0.0}, rule["expr"]
    for t in alert.thresholds:
        if t.setting is not None:
            assert setting_fields()[t.setting].default == t.value, t
        else:
            assert t.why, f"{alert.name}: threshold {t} is neither a setting nor explained"
    if alert.name in ACTS_ON:
        name = ACTS_ON[alert.name]
        assert setting_fields()[name].default in _numbers(rule["expr"]), (alert.name, name)
        assert any(t.setting == name for t in alert.thresholds)


def test_the_latency_objective_is_a_bucket_boundary():
    """histogram_quantile interpolates within a bucket: the objective must be a boundary."""
    bounds = Metrics().latency.upper_bounds  # the histogram's declared buckets
    assert alerts.LATENCY_P99_SECONDS.value in bounds


def test_every_series_the_rules_and_dashboard_name_is_exported(tmp_path):
    exported = _exported(tmp_path)
    in_rules = {n for r in _rules() for n in NAME.findall(r["expr"])}
    board = _dashboard()
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in board["templating"]["list"]]
    in_board = {n for e in exprs for n in NAME.findall(e)}
    assert not in_rules - exported, f"rules name unexported series: {in_rules - exported}"
    assert not in_board - exported, f"the dashboard names unexported series: " \
                                    f"{in_board - exported}"
    cases = yaml.safe_load((MONITORING / "prometheus-rules.test.yaml").read_text())
    in_cases = {NAME.match(s["series"]).group(0) for t in cases["tests"]
                for s in t["input_series"]}
    assert not in_cases - exported, in_cases - exported


def test_route_labels_name_real_routes():
    names = {r.name for r in ROUTES}
    assert set(alerts.INFERENCE_ROUTES) <= names and alerts.SCRAPE_ROUTE in names
    board = _dashboard()
    texts = [r["expr"] for r in _rules()]
    texts += [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    texts += [v["definition"] for v in board["templating"]["list"]]
    for text in texts:
        for value in re.findall(r'route!?=~?"([^"]*)"', text):
            if value == "$route":
                continue
            assert set(value.split("|")) <= names, f"route {value!r} in {text}"
    traffic = next(p for p in board["panels"] if p["title"] == "Request rate by status")
    assert f'route!="{alerts.SCRAPE_ROUTE}"' in traffic["targets"][0]["expr"]
    route = next(v for v in board["templating"]["list"] if v["name"] == "route")
    assert route["allValue"] == "|".join(alerts.INFERENCE_ROUTES)


def test_every_dashboard_threshold_is_its_alerts():
    """A red line is the threshold of the alert its panel names; its expressions hold no
    other number than a quantile; its description repeats no threshold."""
    by_name = {a.name: a for a in alerts.ALERTS}
    lines = 0
    for panel in _dashboard()["panels"]:
        text = panel.get("description") or ""
        named = [by_name[n] for n in re.findall(r"\bKmeans\w+", text)]
        steps = [s["value"] for s in panel.get("fieldConfig", {}).get("defaults", {}).get(
            "thresholds", {}).get("steps", []) if s["value"] is not None]
        for value in steps:
            assert any(value == t.value for a in named for t in a.thresholds), \
                f"panel {panel['title']!r}: line {value} is no threshold of {named}"
            lines += 1
        for target in panel.get("targets", []):
            numbers = _numbers(target["expr"])
            quantiles = {float(q) for q in re.findall(r"histogram_quantile\(([\d.]+)",
                                                      target["expr"])}
            assert numbers <= quantiles, (panel["title"], target["expr"])
        # the only digits of a description: p50/p99, the 7-day window, ranges and sums
        rest = re.sub(r"\bp\d\d\b|7-day|-1\.\.1|sums to 1|\bKmeans\w+|\bkmeans_\w+", "", text)
        assert not re.search(r"\d", rest), f"panel {panel['title']!r} repeats a figure: {text}"
    assert lines >= 4


def test_promtool_cases_fire_and_stay_quiet_for_every_alert():
    cases = alert_tests.cases()
    for alert in alerts.ALERTS:
        mine = [c for c in cases if c.alert == alert.name]
        assert any(c.fired for c in mine), f"no case fires {alert.name}"
        assert any(not c.fired for c in mine), f"no quiet case for {alert.name}"
    doc = yaml.safe_load((MONITORING / "prometheus-rules.test.yaml").read_text())
    assert doc["rule_files"] == ["prometheus-rules.yaml"]
    assert len(doc["tests"]) == len(cases)


def test_every_alert_has_a_runbook_section():
    readme = (MONITORING / "README.md").read_text()
    headings = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.+)$", readme, re.M)}
    for alert in alerts.ALERTS:
        path, anchor = alert.runbook_url.split("#")
        assert path == "monitoring/README.md" and anchor in headings, alert.name
        section = readme.split(f"### {alert.name}\n", 1)[1].split("\n### ", 1)[0]
        for t in alert.thresholds:
            if t.setting:
                assert f"KMEANS_{t.setting.upper()}" in section, (alert.name, t.setting)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_checks_the_rules_and_runs_their_cases():
    """promtool is a program, not a service: its check and every alert's cases run here, in
    about a second (tests/integration/prometheus/ adds a real Prometheus)."""
    for args in (["check", "rules", "prometheus-rules.yaml"],
                 ["test", "rules", "prometheus-rules.test.yaml"]):
        done = subprocess.run(["promtool", *args], cwd=MONITORING, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr


def test_humanize_like_prometheus():
    assert alert_tests.humanize_percentage(0.5) == "50%"
    assert alert_tests.humanize_percentage(0.035) == "3.5%"
    assert alert_tests.humanize_duration(0.0995) == "99.5ms"
