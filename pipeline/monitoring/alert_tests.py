"""The promtool unit tests of the alerts (``monitoring/prometheus-rules.test.yaml``), rendered
by :mod:`pipeline.monitoring.render` from the cases below.

Each alert of :data:`pipeline.monitoring.alerts.ALERTS` has two cases, each a test group of
its own (an aggregation such as ``max()`` cannot tell two series apart): synthetic series that
should fire it, and series just under its threshold that must leave it quiet, both evaluated
after its ``for`` has passed. The series are computed from the declared thresholds, so a
changed threshold moves the cases with it; the expected summaries are Prometheus' template
output, computed here the way its ``humanize*`` functions and ``printf`` format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pipeline.monitoring import alerts as a
from pipeline.monitoring import exposition as x

VERSION = {"model_version": "1"}


@dataclass(frozen=True)
class Case:
    """Series (name{labels} -> promtool's expanded notation) evaluated at ``at`` minutes;
    ``fired`` lists the alerts expected (their extra labels and summary), empty: quiet."""

    alert: str
    series: dict[str, str]
    at: int
    fired: tuple[tuple[dict[str, str], str], ...] = field(default=())


def humanize_percentage(value: float) -> str:
    """Prometheus' ``humanizePercentage``: ``%.4g%%`` of value * 100."""
    return f"{value * 100:.4g}%"


def humanize_duration(seconds: float) -> str:
    """Prometheus' ``humanizeDuration`` for a duration under a second."""
    value, prefix = seconds, ""
    for p in ("m", "u", "n"):
        if abs(value) >= 1:
            break
        prefix, value = p, value * 1000
    return f"{value:.4g}{prefix}s"


def _name(metric: str, **labels: str) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{metric}{{{inner}}}"


def _flat(value: float, minutes: int) -> str:
    return f"{value:g}x{minutes}"


def _counter(per_minute: float, minutes: int) -> str:
    return f"0+{per_minute:g}x{minutes}"


def _ratio_case(alert: str, status: str, ratio: float, at: int) -> Case:
    """Requests at 1/s (over the traffic guard), ``ratio`` of them with ``status``."""
    bad = 60 * ratio
    series = {_name(a.REQUESTS, route="infer", status="200"): _counter(60 - bad, at + 10),
              _name(a.REQUESTS, route="infer", status=status): _counter(bad, at + 10)}
    return Case(alert, series, at)


def _fires(case: Case, summary: str, **labels: str) -> Case:
    return Case(case.alert, case.series, case.at, ((labels, summary),))


def _gauge_cases(alert: str, metric: str, threshold: a.Threshold, summary) -> list[Case]:
    """A window gauge over its threshold for longer than ``for`` (2h), and one just under."""
    high, low = threshold.value * 1.6, threshold.value * 0.98
    return [Case(alert, {_name(metric, **VERSION): _flat(high, 180)}, 130,
                 (({}, summary(high)),)),
            Case(alert, {_name(metric, **VERSION): _flat(low, 180)}, 130)]


def _latency(le_hit: float) -> dict[str, str]:
    """Every inference request falls in the bucket ending at ``le_hit``."""
    t = a.LATENCY_P99_SECONDS.value
    return {_name(a.LATENCY_BUCKET, route="infer", le=f"{le:g}"):
            _counter(60 if le >= le_hit else 0, 30) for le in (t / 2, t, 2 * t)} | {
        _name(a.LATENCY_BUCKET, route="infer", le="+Inf"): _counter(60, 30)}


def _share_shift(x_: float) -> dict[str, str]:
    """Two clusters at 50 assignments a minute each for 3 hours, then ``x_`` a minute moved
    from cluster 1 to cluster 0 for 2 hours: the hourly share leaves the daily one."""
    def series(delta: float) -> str:
        return f"0+50x180 {180 * 50 + 50 + delta:g}+{50 + delta:g}x119"
    return {_name(a.ASSIGNMENTS, cluster="0", **VERSION): series(x_),
            _name(a.ASSIGNMENTS, cluster="1", **VERSION): series(-x_)}


def cases() -> list[Case]:
    """Two cases per alert: one that fires it, one that must not."""
    out: list[Case] = []
    # serving: error ratios at twice the threshold, and just under it
    for alert, status, limit in (("KmeansHighServerErrorRate", "500", a.SERVER_ERROR_RATE),
                                 ("KmeansHighClientErrorRate", "404", a.CLIENT_ERROR_RATE)):
        at = 15 if alert == "KmeansHighServerErrorRate" else 25
        kind = "5xx" if status.startswith("5") else "4xx"
        share = 2 * limit.value
        out += [_fires(_ratio_case(alert, status, share, at),
                       f"kmeans predictor {kind} rate is {humanize_percentage(share)}"),
                _ratio_case(alert, status, 0.9 * limit.value, at)]
    t = a.LATENCY_P99_SECONDS.value
    p99 = t + a.QUANTILE_P99.value * t  # linear within the bucket (t, 2t]
    out += [Case("KmeansHighLatencyP99", _latency(2 * t), 20,
                 (({"route": "infer"}, f"kmeans p99 latency on infer is "
                                       f"{humanize_duration(p99)}"),)),
            Case("KmeansHighLatencyP99", _latency(t), 20)]  # p99 = 0.995 t
    flat = {_name(a.ASSIGNMENTS, cluster="0", **VERSION): _flat(100, 30)}
    out += [Case("KmeansNoAssignments", flat, 15, (({}, "kmeans predictor made no segment "
                                                        "assignments for 10 minutes"),)),
            Case("KmeansNoAssignments",
                 {_name(a.ASSIGNMENTS, cluster="0", **VERSION): _counter(1, 30)}, 15)]
    # model quality
    t = a.OOD_RATE.value
    for share, fired in ((2 * t, True), (0.9 * t, False)):
        series = {_name(a.ASSIGNMENTS, cluster="0", **VERSION): _counter(100, 45),
                  _name(a.OOD, **VERSION): _counter(100 * share, 45)}
        out.append(Case("KmeansOODShareHigh", series, 35, ((
            VERSION, f"OOD share {humanize_percentage(share)} for model version 1"),)
            if fired else ()))
    # x_ a minute moved: the hour-against-day gap is 0.006 x_ at the evaluation and at most
    # 0.0075 x_ at any time; 10 fires, 6 stays under the tolerance throughout
    moved = a.SEGMENT_SHARE_TOLERANCE.value / 0.005
    gap = 0.006 * moved
    out += [Case("KmeansSegmentShareShift", _share_shift(moved), 300, tuple(
                ({"cluster": c, **VERSION}, f"Cluster {c} share moved "
                                            f"{humanize_percentage(gap)} (v1)")
                for c in ("0", "1"))),
            Case("KmeansSegmentShareShift", _share_shift(0.6 * moved), 300)]
    best = 0.5
    keep = a.SILHOUETTE_KEEP.value * best
    for value, fired in ((keep - 0.05, True), (keep + 0.01, False)):
        out.append(Case("KmeansSilhouetteDegraded", {
            _name(x.SILHOUETTE, **VERSION): f"{best:g}x60 {value:g}x150"}, 210,
            (({}, f"kmeans silhouette dropped to {value:.3f}"),) if fired else ()))
    dropped = _name(a.PREDICTION_LOG_ROWS, outcome="dropped")
    out += [Case("KmeansPredictionLogDropping", {dropped: _counter(60, 60)}, 30,
                 (({}, "The prediction log drops 1.0 rows/s"),)),
            Case("KmeansPredictionLogDropping", {dropped: _flat(7, 60)}, 30)]
    # drift: the window gauges
    out += _gauge_cases("KmeansDatasetDrift", x.DRIFT_SHARE, a.DRIFT_SHARE,
                        lambda v: f"{humanize_percentage(v)} of feature columns have drifted")
    out += _gauge_cases("KmeansWindowOODRateHigh", x.OOD_RATE, a.OOD_RATE,
                        lambda v: f"OOD rate is {humanize_percentage(v)} (expected ~1%)")
    out += _gauge_cases("KmeansSegmentSharePSIHigh", x.SEGMENT_PSI, a.SEGMENT_PSI,
                        lambda v: f"Segment shares moved: PSI {v:.2f}")
    out += _gauge_cases("KmeansDistanceRatioHigh", x.DISTANCE_RATIO, a.DISTANCE_RATIO,
                        lambda v: f"Points are {v:.2f}x farther from their centroids")
    out += _gauge_cases("KmeansShadowCentroidShift", x.SHADOW_MAX_SHIFT, a.SHADOW_SHIFT,
                        lambda v: f"A segment's centre moved {v:.2f} mean distances")
    traffic = {_name(a.REQUESTS, route="infer", status="200"): _counter(10, 240)}
    out += [Case("KmeansDriftMonitorAbsent", traffic, 200,
                 (({}, "kmeans drift monitor has not reported for 3 hours"),)),
            Case("KmeansDriftMonitorAbsent",
                 {**traffic, _name(x.DRIFT_SHARE, **VERSION): _flat(0.1, 240)}, 200)]
    return out


def _expand(text: str, labels: dict[str, str]) -> str:
    """Prometheus' ``{{ $labels.<name> }}`` filled in (the summaries are given expanded)."""
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)


def test_file(rules: str) -> dict:
    """The promtool test file of :func:`cases`, reading the rules file named ``rules``."""
    by_name = {alert.name: alert for alert in a.ALERTS}
    tests = []
    for case in cases():
        alert = by_name[case.alert]
        expected = [{"exp_labels": {"severity": alert.severity, **labels},
                     "exp_annotations": {**{k: _expand(v, labels) for k, v in
                                            alert.rule()["annotations"].items()},
                                         "summary": summary}}
                    for labels, summary in case.fired]
        tests.append({
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
            "alert_rule_test": [{"eval_time": f"{case.at}m", "alertname": case.alert,
                                 "exp_alerts": expected}]})
    return {"rule_files": [rules], "evaluation_interval": "1m", "tests": tests}
