"""The alerts, declared once: each one's name, PromQL, ``for``, severity, summary, description
and runbook, built from the metric names and from the thresholds the automation acts on.

Every number an alert compares against is a :class:`Threshold`: either the default of a
``KMEANS_*`` setting (so a person is paged at the figure the monitoring DAG, the rollback
watch or the retraining trigger acts on) or a figure declared here, with the reason it has no
setting. ``python -m pipeline.monitoring.render`` renders the Prometheus rules (a plain rules
file and the Prometheus Operator's ``PrometheusRule``) from :data:`ALERTS`; the unit tests
fail when a committed file differs from the rendering, when a literal in a rule or in the
Grafana dashboard is not one of these thresholds, or when a rule names a series no registry
exports.

The serving series are named here as strings (the server's registry,
:class:`pipeline.serving.metrics.Metrics`, sits in a layer above this one); the tests
instantiate that registry and check every name. The monitoring exporter's series come from
:mod:`pipeline.monitoring.exposition`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.core.settings import setting_fields
from pipeline.monitoring import exposition as x

# The server's series (pipeline/serving/metrics.py and the prediction log's counters).
REQUESTS = "kmeans_requests_total"
LATENCY_BUCKET = "kmeans_request_latency_seconds_bucket"
ASSIGNMENTS = "kmeans_assignments_total"
OOD = "kmeans_ood_total"
PREDICTION_LOG_ROWS = "kmeans_prediction_log_rows_total"
#: The ``route`` label values of the inference routes (pipeline/serving/routes.py names).
INFERENCE_ROUTES = ("infer", "predict")
#: The ``route`` label value of Prometheus' own scrapes, which is not traffic.
SCRAPE_ROUTE = "metrics"

#: Where each alert's runbook is: a section of monitoring/README.md named after the alert.
RUNBOOK = "monitoring/README.md"

GROUPS = {"kmeans-serving": "30s", "kmeans-model": "1m", "kmeans-drift": "1m"}


@dataclass(frozen=True)
class Threshold:
    """A number an alert compares against: the default of ``setting`` when it has one, else
    ``value`` as declared here (``why`` says why it is not a setting)."""

    value: float
    setting: str | None = None
    why: str = ""

    def __str__(self) -> str:
        return f"{self.value:g}"


def setting(name: str) -> Threshold:
    """The default of setting ``name`` as a threshold (the environment is not read: the
    rendered files hold the defaults, the same whatever the machine that renders them)."""
    default = setting_fields()[name].default
    if not isinstance(default, (int, float)):
        raise TypeError(f"setting {name} has default {default!r}, not a number")
    return Threshold(float(default), setting=name)


def declared(value: float, why: str) -> Threshold:
    return Threshold(float(value), why=why)


# The thresholds. Those of the settings are the figures the automation acts on.
SERVER_ERROR_RATE = setting("watch_max_error_rate")
OOD_RATE = setting("monitor_max_ood_rate")
DRIFT_SHARE = setting("drift_share_threshold")
SEGMENT_PSI = setting("monitor_max_segment_psi")
DISTANCE_RATIO = setting("monitor_max_distance_ratio")
SHADOW_SHIFT = setting("monitor_max_shadow_shift")
SEGMENT_SHIFT_MIN_ROWS = setting("monitor_min_rows")
MIN_TRAFFIC = declared(0.2, "requests/s under which an error ratio is noise (one failure at "
                            "3am); a full outage is KmeansNoAssignments' business")
CLIENT_ERROR_RATE = declared(0.05, "4xx is the callers' doing: nothing in the platform acts "
                                   "on it, a person looks")
LATENCY_P99_SECONDS = declared(0.05, "the inference routes' latency objective; a bucket "
                                     "boundary of kmeans_request_latency_seconds (the "
                                     "rollback watch's KMEANS_WATCH_MAX_P99_MS is a much "
                                     "looser limit)")
SEGMENT_SHARE_TOLERANCE = declared(0.05, "hour-against-day move of a live cluster share, "
                                         "in share points; the monitoring windows judge "
                                         "shares by PSI (KMEANS_MONITOR_MAX_SEGMENT_PSI)")
SILHOUETTE_KEEP = declared(0.8, "share of the past week's best silhouette kept; nothing "
                                "acts on the silhouette, a person looks")
QUANTILE_P99 = declared(0.99, "the quantile the latency objective is about")
NONE = declared(0, "any dropped row is data the monitoring windows never see")


@dataclass(frozen=True)
class Alert:
    """One alerting rule; ``thresholds`` are every number its PromQL compares against."""

    name: str
    group: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    thresholds: tuple[Threshold, ...] = field(default=())
    #: Why the rule is written the way it is (a comment in the rendered file).
    note: str = ""

    @property
    def runbook_url(self) -> str:
        return f"{RUNBOOK}#{self.name.lower()}"

    def rule(self) -> dict:
        """The rule as Prometheus reads it."""
        return {"alert": self.name, "expr": self.expr, "for": self.for_,
                "labels": {"severity": self.severity},
                "annotations": {"summary": self.summary, "description": self.description,
                                "runbook_url": self.runbook_url}}


def pct(t: Threshold) -> str:
    """``0.05`` as ``5%``."""
    return f"{t.value * 100:g}%"


def _ratio(selector: str, window: str = "5m") -> str:
    return (f"(\n    sum(rate({REQUESTS}{{{selector}}}[{window}]))\n  /\n"
            f"    sum(rate({REQUESTS}[{window}]))\n)")


def _traffic_guard(window: str = "5m") -> str:
    return f"and on ()\nsum(rate({REQUESTS}[{window}])) > {MIN_TRAFFIC}"


def _share_by_version(window: str) -> str:
    return (f"    sum by (model_version, cluster) (rate({ASSIGNMENTS}[{window}]))\n"
            f"  / on (model_version) group_left\n"
            f"    sum by (model_version) (rate({ASSIGNMENTS}[{window}]))")


_ROUTES = "|".join(INFERENCE_ROUTES)
_5XX, _4XX = 'status=~"5.."', 'status=~"4.."'
_RETRAIN = ("The monitoring DAG triggers kmeans_training (once per cooldown); ")

ALERTS: tuple[Alert, ...] = (
    # ------------------------------------------------------------------ serving
    Alert(
        "KmeansHighServerErrorRate", "kmeans-serving",
        f"{_ratio(_5XX)} > {SERVER_ERROR_RATE}\n{_traffic_guard()}",
        "5m", "critical",
        "kmeans predictor 5xx rate is {{ $value | humanizePercentage }}",
        f"More than {pct(SERVER_ERROR_RATE)} of requests returned 5xx for 5 minutes (the "
        "rate at which the watch rolls a new champion back). Check the server's log and "
        "whether a canary receives traffic; roll back with kmeans_rollback.",
        (SERVER_ERROR_RATE, MIN_TRAFFIC),
        note="Ratio of 5xx over all requests, with a traffic guard."),
    Alert(
        "KmeansHighClientErrorRate", "kmeans-serving",
        f"{_ratio(_4XX)} > {CLIENT_ERROR_RATE}\n{_traffic_guard()}",
        "15m", "warning",
        "kmeans predictor 4xx rate is {{ $value | humanizePercentage }}",
        f"More than {pct(CLIENT_ERROR_RATE)} of requests returned 4xx for 15 minutes. Look "
        "for a client sending a changed feature schema (422), a rotated KMEANS_SERVING_TOKEN "
        "(401/403) or a wrong model name (404).",
        (CLIENT_ERROR_RATE, MIN_TRAFFIC),
        note="4xx is usually a caller problem: it only warns, over a longer window."),
    Alert(
        "KmeansHighLatencyP99", "kmeans-serving",
        f"histogram_quantile({QUANTILE_P99},\n  sum by (le, route) (\n"
        f'    rate({LATENCY_BUCKET}{{route=~"{_ROUTES}"}}[5m])\n  )\n) > {LATENCY_P99_SECONDS}',
        "10m", "warning",
        "kmeans p99 latency on {{ $labels.route }} is {{ $value | humanizeDuration }}",
        f"p99 request latency of an inference route has been above "
        f"{LATENCY_P99_SECONDS.value * 1000:g} ms for 10 minutes. Usual causes: CPU "
        "throttling, the online store's latency (lookups by customer id), or too few "
        "replicas.",
        (QUANTILE_P99, LATENCY_P99_SECONDS),
        note="Inference routes only: health and metrics routes would dilute the tail."),
    Alert(
        "KmeansNoAssignments", "kmeans-serving",
        f"(sum(rate({ASSIGNMENTS}[2m])) or vector(0)) == 0",
        "10m", "critical",
        "kmeans predictor made no segment assignments for 10 minutes",
        "No customer has been assigned to a segment for 10 minutes. Either upstream traffic "
        f"stopped or every request fails before assignment. Check {REQUESTS} by status and "
        "/v2/health/ready.",
        note="`or vector(0)`: fires too when the counter was never exported (no traffic)."),
    # -------------------------------------------------------------- model quality
    Alert(
        "KmeansOODShareHigh", "kmeans-model",
        f"(\n    sum by (model_version) (rate({OOD}[15m]))\n  /\n"
        f"    sum by (model_version) (rate({ASSIGNMENTS}[15m]))\n) > {OOD_RATE}",
        "15m", "warning",
        "OOD share {{ $value | humanizePercentage }} for model version "
        "{{ $labels.model_version }}",
        f"More than {pct(OOD_RATE)} of the customers scored live fall beyond the training "
        "p99 distance (out of distribution). For a freshly promoted version, consider a "
        "rollback to `previous`; otherwise the population moved and a retraining is due.",
        (OOD_RATE,),
        note="Live, per model version, so a bad canary stands out against the champion."),
    Alert(
        "KmeansSegmentShareShift", "kmeans-model",
        f"(\n  abs(\n{_share_by_version('1h')}\n    -\n{_share_by_version('1d')}\n"
        f"  ) > {SEGMENT_SHARE_TOLERANCE}\n)\nand on (model_version)\n"
        f"sum by (model_version) (increase({ASSIGNMENTS}[1h])) > {SEGMENT_SHIFT_MIN_ROWS}",
        "30m", "warning",
        "Cluster {{ $labels.cluster }} share moved {{ $value | humanizePercentage }} "
        "(v{{ $labels.model_version }})",
        "The hourly share of customers assigned to cluster {{ $labels.cluster }} differs "
        f"from its 24h share by more than {SEGMENT_SHARE_TOLERANCE.value * 100:g} "
        "percentage points for 30 minutes. Expected after campaigns or seasonality; "
        "otherwise look for upstream feature changes.",
        (SEGMENT_SHARE_TOLERANCE, SEGMENT_SHIFT_MIN_ROWS),
        note="Within one model_version: cluster ids are not comparable across versions."),
    Alert(
        "KmeansSilhouetteDegraded", "kmeans-model",
        f"max({x.SILHOUETTE}) < {SILHOUETTE_KEEP} * max(max_over_time({x.SILHOUETTE}[7d]))",
        "2h", "info",
        'kmeans silhouette dropped to {{ $value | printf "%.3f" }}',
        f"Cluster separation on recent data is more than "
        f"{(1 - SILHOUETTE_KEEP.value) * 100:g}% below the best value of the past 7 days. "
        "Review the monitoring windows before the next retraining.",
        (SILHOUETTE_KEEP,),
        note="Clusters blurring even when no single feature drifted."),
    Alert(
        "KmeansPredictionLogDropping", "kmeans-model",
        f'sum(rate({PREDICTION_LOG_ROWS}{{outcome="dropped"}}[10m])) > {NONE}',
        "15m", "warning",
        'The prediction log drops {{ $value | printf "%.1f" }} rows/s',
        "The inference server's prediction log is dropping rows (queue full or write "
        "failures; see the server's log). Drift windows are computed on fewer rows until it "
        "recovers.",
        (NONE,),
        note="The log drops rows rather than slow requests."),
    # ------------------------------------------------------------------- drift
    Alert(
        "KmeansDatasetDrift", "kmeans-drift",
        f"max({x.DRIFT_SHARE}) > {DRIFT_SHARE}",
        "2h", "warning",
        "{{ $value | humanizePercentage }} of feature columns have drifted",
        f"More than {pct(DRIFT_SHARE)} of the feature columns drifted from the champion's "
        f"training reference for two consecutive checks. {_RETRAIN}confirm the run started "
        "and review the challenger before promotion.",
        (DRIFT_SHARE,),
        note="The gauge changes once per window: `for` spans two windows."),
    Alert(
        "KmeansWindowOODRateHigh", "kmeans-drift",
        f"max({x.OOD_RATE}) > {OOD_RATE}",
        "2h", "warning",
        "OOD rate is {{ $value | humanizePercentage }} (expected ~1%)",
        f"The share of a window's customers beyond the training p99 distance has stayed "
        f"above {pct(OOD_RATE)} for two windows (about 1% by construction). {_RETRAIN}the "
        "current k may no longer cover the population.",
        (OOD_RATE,)),
    Alert(
        "KmeansSegmentSharePSIHigh", "kmeans-drift",
        f"max({x.SEGMENT_PSI}) > {SEGMENT_PSI}",
        "2h", "warning",
        'Segment shares moved: PSI {{ $value | printf "%.2f" }}',
        "Customers moved between segments against the champion's training reference for two "
        f"consecutive windows. {_RETRAIN}review the window's report.",
        (SEGMENT_PSI,)),
    Alert(
        "KmeansDistanceRatioHigh", "kmeans-drift",
        f"max({x.DISTANCE_RATIO}) > {DISTANCE_RATIO}",
        "2h", "warning",
        'Points are {{ $value | printf "%.2f" }}x farther from their centroids',
        f"The mean distance to the assigned centroid is more than "
        f"{(DISTANCE_RATIO.value - 1) * 100:g}% above the training reference for two "
        f"consecutive windows. {_RETRAIN}review the window's report.",
        (DISTANCE_RATIO,)),
    Alert(
        "KmeansShadowCentroidShift", "kmeans-drift",
        f"max({x.SHADOW_MAX_SHIFT}) > {SHADOW_SHIFT}",
        "2h", "warning",
        "A segment's centre moved {{ $value | printf \"%.2f\" }} mean distances",
        "The streaming shadow model's centroids have moved away from the champion's for two "
        f"consecutive windows: the segments themselves moved. {_RETRAIN}the window's report "
        "shows which segment moved.",
        (SHADOW_SHIFT,),
        note="In the champion's mean distance to centroid."),
    Alert(
        "KmeansDriftMonitorAbsent", "kmeans-drift",
        f"absent({x.DRIFT_SHARE})",
        "3h", "warning",
        "kmeans drift monitor has not reported for 3 hours",
        f"{x.DRIFT_SHARE} is missing: the drift, OOD-rate, segment-share and silhouette "
        "alerts cannot fire. Check that kmeans_monitoring runs and that Prometheus scrapes "
        "`kmeans monitor-exporter`.",
        note="Every drift alert is silent when the monitor is not reporting."),
)


def groups() -> list[dict]:
    """The rule groups, as a Prometheus rules file holds them under ``groups:``."""
    return [{"name": name, "interval": interval,
             "rules": [a.rule() for a in ALERTS if a.group == name]}
            for name, interval in GROUPS.items()]
