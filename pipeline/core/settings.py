"""Typed settings, loaded explicitly, never at import.

All values come from ``KMEANS_*`` environment variables (or a ``.env`` file) on top of the defaults
of the active profile. ``local`` (the default) needs no servers: SQLite for MLflow and the Feast
online store, Parquet for the lake and the offline store, Spark ``local[*]``. ``production`` expects
an MLflow server, Redis for Feast, Spark on Kubernetes and a serving token.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.core.io import StorePath

PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: URI schemes pyarrow.fs opens (KMEANS_OFFLINE_URI).
STORE_SCHEMES = frozenset({"s3", "gs", "gcs", "abfs", "abfss", "hdfs", "file"})

# The behaviour features every stage agrees on: the validation suite, the ingest rules, the
# model's preprocessing and the serving schema derive from this one table; the Feast feature
# view (feature_repo/, declarations only) names the same features, and a test checks it.
FEATURES: dict[str, dict[str, float | bool]] = {
    "total_spend_30d": {"min": 0.0, "max": 1e6, "log": True},
    "avg_order_value": {"min": 0.0, "max": 1e5, "log": True},
    "orders_30d": {"min": 0.0, "max": 1000.0, "log": True},
    "sessions_30d": {"min": 0.0, "max": 5000.0, "log": True},
    "days_since_last_order": {"min": 0.0, "max": 3650.0, "log": True},
    "tenure_days": {"min": 0.0, "max": 10000.0, "log": False},
    "returns_30d": {"min": 0.0, "max": 500.0, "log": True},
    "discount_share": {"min": 0.0, "max": 1.0, "log": False},
    "support_tickets_90d": {"min": 0.0, "max": 500.0, "log": True},
    "mobile_share": {"min": 0.0, "max": 1.0, "log": False},
    "categories_browsed_30d": {"min": 0.0, "max": 200.0, "log": False},
    "email_open_rate": {"min": 0.0, "max": 1.0, "log": False},
}
FEATURE_NAMES: list[str] = list(FEATURES)

# KMEANS_* variables read by other parts (the kernel), not settings of a deployment.
_NOT_SETTINGS = {"KMEANS_KERNEL_THREADS", "KMEANS_ALERT_WEBHOOK_URL", "KMEANS_SOAK_SECONDS"}
#: KMEANS_STAGE_DIR value that stages on each executor's own local dirs.
EXECUTOR_STAGE_DIR = "executor"

# ---- one deployment's names and ports ------------------------------------------------------
#: The deployment of the defaults: its names are the historical ones (kmeans_mlflow, ...).
DEFAULT_DEPLOYMENT = "kmeans"
#: A deployment's name: it starts database names, Redis keys and the Feast project.
DEPLOYMENT_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
#: Each port of a deployment is KMEANS_PORT_BASE + its offset when a base is set, else its
#: default; a setting of its own (KMEANS_AIRFLOW_PORT, ...) wins over both.
PORT_OFFSETS = {"airflow": 0, "mlflow_ui": 1, "spark_ui": 2, "prod_mlflow": 3,
                "prod_serving": 4}
DEFAULT_PORTS = {"airflow": 8080, "mlflow_ui": 5000, "spark_ui": 4040, "prod_mlflow": 5050,
                 "prod_serving": 8090}
#: Where the Airflow plugin mounts its app, and serves the reports folder, on the API server.
AIRFLOW_PLUGIN_PREFIX = "/kmeans"
AIRFLOW_REPORTS_PATH = f"{AIRFLOW_PLUGIN_PREFIX}/reports"
LOOPBACK = "127.0.0.1"


def airflow_url(port: int, host: str = LOOPBACK) -> str:
    """The Airflow API server's base URL: the one place every Airflow URL is built from (the
    API server's base URL, the tasks' execution API, the review links, the printed address)."""
    return f"http://{host}:{port}"


def airflow_reports_url(port: int, host: str = LOOPBACK) -> str:
    """Where the Airflow plugin serves the reports folder on the API server at ``port``."""
    return airflow_url(port, host) + AIRFLOW_REPORTS_PATH


class Settings(BaseSettings):
    """Settings of one deployment of the platform."""

    model_config = SettingsConfigDict(
        env_prefix="KMEANS_", env_file=PROJECT_ROOT / ".env", extra="forbid",
        validate_default=True,
        # A refused value is named by its setting, never echoed: it may be a token.
        hide_input_in_errors=True,
    )

    profile: Literal["local", "production"] = Field(
        "local", description="local: embedded default, no servers; production: cluster services."
    )
    home: Path = Field(
        PROJECT_ROOT / ".kmeans",
        description="Working folder of the embedded default: lake, stores, reports, staged blocks.",
    )
    # Filled from `home` after validation (typed as the filled value).
    lake_dir: Path = Field(None, validate_default=False,  # type: ignore[assignment]
                           description="Data lake root (default: <home>/lake).")
    lake_url: str | None = Field(
        None, min_length=1,
        description="Where `kmeans ingest` and kmeans_ingest_lake read the lake's day folders "
                    "when it is not lake_dir: an object-store URI pyarrow.fs opens "
                    "(s3://bucket/lake, gs://..., abfs://...; S3 options as query parameters, "
                    "e.g. ?endpoint_override=host:port&scheme=http; credentials from the "
                    "store's usual environment) or a local path.")
    feast_repo: Path = Field(PROJECT_ROOT / "feature_repo", description="Feast repository folder.")
    feature_service: str = Field("customer_segments_v1", description="Feast feature service.")
    redis_connection_string: str = Field(
        "127.0.0.1:6379", description="Feast online store (Redis) in the production profile."
    )
    feast_project: str = Field(  # type: ignore[assignment]
        None, validate_default=False, pattern=r"^[A-Za-z0-9][A-Za-z0-9_]*$",
        description="Feast project: names the registry's objects and ends every key of the "
                    "online store, so deployments sharing one Redis keep apart (default: "
                    "customer_segments for the deployment 'kmeans', else "
                    "<deployment>_customer_segments).")
    postgres_url: SecretStr | None = Field(
        None, description="PostgreSQL server of the production stack on one machine "
                          "(`make prod-up`: MLflow's backend store, Airflow's metadata), e.g. "
                          "postgresql://postgres@127.0.0.1:5432; when set, the production "
                          "profile checks at start that it answers.")
    mlflow_tracking_uri: str = Field(  # type: ignore[assignment]
        None, validate_default=False, description="MLflow tracking URI (default: sqlite:///<home>/mlflow.db)."
    )
    mlflow_experiment: str = Field("customer_segments", description="MLflow experiment name.")
    model_name: str = Field("customer_segments", description="MLflow registered model name.")
    spark_master: str = Field(
        "local[*]", description="Spark master (k8s://... in production; empty: spark-submit's)."
    )
    spark_driver_memory: str = Field("2g", description="Spark driver memory.")
    spark_partitions: int = Field(
        4, ge=1, description="Snapshot files = Spark tasks per iteration.")
    stage_dir: Path = Field(  # type: ignore[assignment]
        None, validate_default=False,
        description="Folder for staged float32 blocks (default: <home>/blocks); 'executor': "
                    "each Spark executor's own local dirs (SPARK_LOCAL_DIRS) at task time.",
    )
    snapshots_uri: str | None = Field(
        None, description="Where training snapshots go when Spark executors share no "
                          "filesystem with the driver: an object-store URI that pyarrow.fs "
                          "reads (s3://bucket/prefix, gs://, abfs://; options such as "
                          "?endpoint_override=host:port&scheme=http in the URI, credentials from "
                          "the environment). Default: <home>/snapshots.")
    offline_uri: str | None = Field(
        None, min_length=1,
        description="Where the offline feature tables live when not <home>/offline: an "
                    "object-store URI pyarrow.fs opens (s3://bucket/offline; options as query "
                    "parameters, e.g. ?endpoint_override=host:port&scheme=http; credentials "
                    "from the store's environment). The sources land there, Feast reads it "
                    "(FileSources are pointed at it on apply) and the segments are published "
                    "there. Rejected rows stay on the local disk (<home>/rejected).")
    min_rows: int = Field(500, ge=1, description="Fewest rows a training snapshot may have.")
    max_null_share: float = Field(0.10, ge=0, le=1, description="Largest null share per feature.")
    ingest_max_reject_share: float = Field(
        0.2, ge=0, le=1,
        description="Largest share of a lake day's rows ingest may reject; above it the day "
                    "fails and its previous landing is kept.")
    ingest_earliest_event: dt.date = Field(
        dt.date(2000, 1, 1), ge=dt.date(1678, 1, 1),
        description="Earliest event day every source accepts (YYYY-MM-DD): a row whose "
                    "event_timestamp or created_timestamp is before it is quarantined with the "
                    "reason, so sentinel dates (1900-01-01, 1700-01-01) do not land in "
                    "partitions of their own. The latest accepted is this host's clock plus 5 "
                    "minutes (later rows are 'in the future').")
    reports_url: str | None = Field(
        None, description="Base URL that serves the reports folder (the Airflow plugin's "
                          "<Airflow URL>/kmeans/reports); the drift review links the Evidently "
                          "report there. Unset: the review names the report's path.")
    serving_host: str = Field("127.0.0.1", description="Inference server bind address.")
    serving_port: int = Field(8080, ge=0, le=65535, description="Inference server port.")
    serving_token: SecretStr | None = Field(
        None, description="Bearer token for predictions (printable ASCII, no spaces); unset: "
                          "predictions need no token (local profile only). Required in the "
                          "production profile; an empty value is refused, not taken as unset.")
    admin_token: SecretStr | None = Field(
        None, description="Bearer token for the admin endpoints that change state (printable "
                          "ASCII, no spaces, not the serving token); unset: the admin API is "
                          "off. Required in the production profile.")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body.")
    max_batch_rows: int = Field(10_000, ge=1, description="Largest batch in one request.")
    max_concurrency: int = Field(
        256, ge=1, description="Requests in flight before the server answers 503 (probes exempt)."
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, le=1024 * 1024,
        description="Largest request line plus headers; larger heads get 431 and the "
                    "connection is closed.")
    header_timeout_seconds: float = Field(
        10.0, gt=0, le=3600,
        description="Time a request's line and headers may take to arrive (and an idle new "
                    "connection may wait); then 408 and the connection is closed.")
    body_timeout_seconds: float = Field(
        30.0, gt=0, le=3600,
        description="Time a request's body may take to arrive once its headers did; then 408 "
                    "and the connection is closed. A request takes a concurrency slot only "
                    "once its body is read.")
    admin_max_concurrency: int = Field(
        4, ge=1, description="Admin API requests in flight before it answers 503: a budget of "
                             "its own, apart from max_concurrency.")
    max_pipelined_requests: int = Field(
        16, ge=1, le=1024,
        description="Requests one connection may have read ahead of their answers (HTTP/1.1 "
                    "pipelining); beyond it the server stops reading from that connection "
                    "until its answers went out.")
    max_queued_requests: int = Field(
        1024, ge=1,
        description="Pipelined requests read ahead of their turn (waiting behind another "
                    "request of their connection), over all connections; beyond it the server "
                    "stops reading further ones until some have run.")
    max_lookup_ids: int = Field(
        1000, ge=1,
        description="Customer ids one request may look up in the online store; more get a 400 "
                    "naming this limit (feature vectors are bounded by max_batch_rows).")
    max_write_buffer_bytes: int = Field(
        256 * 1024, ge=16 * 1024, le=64 * 1024 * 1024,
        description="Answer bytes a connection may have waiting for its client to read them "
                    "(beyond the answer being written); above it the server reads no further "
                    "request from that connection and starts no further answer.")
    write_timeout_seconds: float = Field(
        30.0, gt=0, le=3600,
        description="Time a connection's unread answers (over max_write_buffer_bytes) may wait "
                    "without the client reading any of them; then the connection is closed and "
                    "the answers dropped.")
    shutdown_grace_seconds: float = Field(
        20.0, ge=3, le=3600,
        description="Time from SIGTERM to the server's exit: requests in flight get all but "
                    "the last 2 s of it to finish; what is still running then is cancelled. "
                    "The predictor's terminationGracePeriodSeconds is larger.")
    range_tolerance: float = Field(
        10.0, ge=0, le=1000,
        description="How far outside a feature's valid range (FEATURES min and max) a served "
                    "value may lie, in widths of that range: with 10 a share in [0, 1] is "
                    "accepted in [-10, 11]. Farther values, and values beyond float32, get a "
                    "400 naming the row and the feature.")

    prediction_log_sample_rate: float = Field(
        1.0, ge=0, le=1,
        description="Share of prediction requests the server writes to the prediction log "
                    "(<home>/predictions/hour=.../*.parquet), which the monitoring DAG reads; "
                    "0 turns the log off.")
    prediction_log_max_queue_rows: int = Field(
        100_000, ge=1,
        description="Rows the prediction log may hold in memory before it drops (and counts) "
                    "new ones rather than slow a request.")

    # monitoring (the kmeans_monitoring DAG; monitoring/drift.yaml documents the same figures)
    monitor_min_rows: int = Field(
        500, ge=1, description="Fewest champion rows in a monitoring window for it to be "
                               "judged; fewer: the window is reported as too_few_rows.")
    monitor_max_segment_psi: float = Field(
        0.2, gt=0, description="Monitoring: largest population stability index of the segment "
                               "shares against the champion's reference.")
    monitor_max_distance_ratio: float = Field(
        1.25, gt=0, description="Monitoring: largest ratio of the window's mean distance to "
                                "the assigned centroid over the reference's.")
    monitor_max_novelty_rate: float = Field(
        0.05, ge=0, le=1, description="Monitoring: largest share of points beyond the "
                                      "training 99th-percentile distance (1% expected).")
    monitor_max_low_margin_share: float = Field(
        0.15, ge=0, le=1, description="Monitoring: largest share of points closer to a "
                                      "cluster boundary than the reference's 5th-percentile "
                                      "margin (5% expected).")
    monitor_max_shadow_shift: float = Field(
        0.25, gt=0, description="Monitoring: largest shift of a centroid of the streaming "
                                "shadow model from the champion's, in the champion's mean "
                                "distance of a point to its centroid "
                                "(pipeline/monitoring/shadow.py).")
    monitor_retrain_cooldown_hours: float = Field(
        24.0, ge=0, description="Monitoring triggers kmeans_training at most once per this "
                                "many hours, however long the drift lasts.")
    watch_hours: float = Field(
        6.0, ge=0, description="After a promotion, the new champion is watched this many "
                               "hours: a monitoring window that finds it degraded rolls it "
                               "back to 'previous' (0: no watch).")
    watch_max_error_rate: float = Field(
        0.01, ge=0, le=1, description="Watch: largest share of the champion's requests that "
                                      "failed with a server error.")
    watch_max_p99_ms: float = Field(
        250.0, gt=0, description="Watch: largest p99 latency (ms) of the champion's requests.")

    # promotion gates
    # Defaults sit below what the generated demo data gives (silhouette interval lower bound
    # about 0.27, Davies-Bouldin about 1.38, smallest cluster about 14%), so a healthy model
    # passes and a degenerate one does not.
    gate_min_silhouette_lo: float = Field(
        0.20, ge=-1, le=1,
        description="Quality gate: lowest allowed lower bound of the challenger's 95% bootstrap "
                    "silhouette interval on the holdout.")
    gate_max_davies_bouldin: float = Field(
        2.0, gt=0, description="Quality gate: highest allowed Davies-Bouldin index on the holdout.")
    gate_min_cluster_share: float = Field(
        0.01, ge=0, lt=1,
        description="Quality gate: smallest allowed share of training rows in any cluster "
                    "(an empty cluster, or a relocated one, is always refused).")
    gate_comparison_tolerance: float = Field(
        0.05, ge=0, le=1,
        description="Comparison gate: how much worse than the champion the challenger may score "
                    "on the same holdout, relative (silhouette and Davies-Bouldin).")
    drift_column_threshold: float = Field(
        0.1, gt=0,
        description="Drift gate: normalised Wasserstein distance above which a feature column "
                    "counts as drifted (monitoring/drift.yaml drift_column_threshold).")
    drift_share_threshold: float = Field(
        0.3, ge=0, le=1,
        description="Drift gate: share of drifted feature columns above which a person must "
                    "approve the model (monitoring/drift.yaml drift_share_threshold).")
    drift_sample_rows: int = Field(
        5000, ge=100,
        description="Rows of the reference sample kept with each registered model, and of the "
                    "new snapshot compared with it.")
    alias_lock_wait_seconds: float = Field(
        30.0, ge=0,
        description="How long registering a challenger waits for a promotion or rollback in "
                    "progress (promote and rollback themselves never wait).")

    # the sources the kmeans_ingest_<source> DAGs land (dags/kmeans_ingest.py)
    sql_url: SecretStr | None = Field(
        None, description="PostgreSQL source of the kmeans_ingest_sql DAG, "
                          "postgresql://user@host:port/db (a password is best given by "
                          "PGPASSWORD or ~/.pgpass); unset: that DAG skips. Set with "
                          "KMEANS_SQL_TABLE and KMEANS_SQL_WATERMARK. Not the stack's "
                          "KMEANS_POSTGRES_URL.")
    sql_table: str | None = Field(
        None, min_length=1, description="Table (schema.table) or SELECT query the "
                                        "kmeans_ingest_sql DAG reads (`kmeans ingest-sql "
                                        "--table`).")
    sql_watermark: str | None = Field(
        None, min_length=1, description="Timestamp column the kmeans_ingest_sql DAG reads the "
                                        "rows of its interval by (`kmeans ingest-sql "
                                        "--watermark`).")
    sql_source: str | None = Field(
        None, pattern=r"^[a-z0-9_]{1,64}$",
        description="Source name of the kmeans_ingest_sql DAG's landings (`kmeans ingest-sql "
                    "--source`); default: from the table name (a query needs one).")
    train_min_arrival_rows: int = Field(
        1000, ge=0, description="Fewest rows the landings that trigger a kmeans_training run "
                                "on data arrival (the features asset) must bring; a run "
                                "triggered by fewer is skipped (the daily run takes them in).")
    stream_drain_seconds: float = Field(
        300.0, gt=0, le=3300,
        description="Most seconds a kmeans_ingest_stream run drains the stream; it stops "
                    "earlier once it is caught up.")

    # stream (pipeline/data/sources/stream.py, `kmeans consume`)
    stream_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Event stream the consumer reads: redis://host:port/db (Redis Streams with "
                    "a consumer group, the embedded default) or kafka://host:port[,host:port] "
                    "(Kafka through confluent-kafka, the production profile).")
    stream_name: str = Field(  # type: ignore[assignment]
        None, min_length=1, validate_default=False,
        description="Redis stream key, or Kafka topic, of the customer events (default: "
                    "<deployment>:customer_events).")
    stream_group: str = Field(  # type: ignore[assignment]
        None, min_length=1, validate_default=False,
        description="Consumer group (Redis) or group.id (Kafka) of the stream consumer "
                    "(default: <deployment>-consumer).")
    stream_consumer: str | None = Field(
        None, description="This consumer's name in the group; stable across restarts so that "
                          "a restarted consumer re-reads its own unacknowledged events first "
                          "(default: the host name). Two consumers on one host need two names.")
    stream_batch_size: int = Field(
        1000, ge=1, le=100_000, description="Most events the consumer reads, lands, pushes and "
                                            "acknowledges in one batch.")
    stream_claim_idle_seconds: float = Field(
        60.0, gt=0, description="Unacknowledged events of another consumer idle this long are "
                                "claimed (XAUTOCLAIM) and processed: that consumer is taken "
                                "for dead. Keep it well above a batch's processing time.")
    stream_segments: bool = Field(
        True, description="The consumer also assigns each fresh event with the champion and "
                          "pushes the customer's new segment to the customer_segment view "
                          "(near-real-time segments; off: features only).")
    stream_model_refresh_seconds: float = Field(
        10.0, gt=0, description="How often the consumer checks whether the champion moved; it "
                                "then assigns with the new version.")
    shadow_half_life_points: float = Field(
        10_000.0, gt=0,
        description="Half-life, in accepted events, of the streaming shadow model's memory "
                    "(pipeline/monitoring/shadow.py): an event's weight halves after this many "
                    "newer ones. Shorter follows drift sooner and is noisier.")

    # rollout
    rollout_backend: Literal["none", "local", "kubernetes"] = Field(
        "none", description="Where the rollout controller moves traffic: 'local' (the inference "
                            "server's admin API at serving_url), 'kubernetes' (a KServe "
                            "InferenceService), or 'none' (registry aliases only).")
    serving_url: str | None = Field(
        None, description="Base URL of the inference server for the local backend "
                          "(default http://<serving_host>:<serving_port>).")
    rollout_steps: str = Field(
        "shadow,10,50,100", description="Rollout steps: 'shadow' and canary percentages.")
    rollout_interval_seconds: float = Field(
        60.0, gt=0, description="Analysis interval of each rollout step.")
    rollout_min_agreement: float = Field(
        0.80, ge=0, le=1, description="Lowest assignment agreement a canary may show.")
    rollout_max_distance_shift: float = Field(
        0.25, ge=0, description="Largest relative shift of the canary's median distance.")
    kserve_namespace: str = Field("kmeans", description="Namespace of the InferenceService.")
    kserve_name: str = Field("customer-segments", description="Name of the InferenceService.")

    # one deployment's names and ports: two deployments on one machine, one PostgreSQL and one
    # Redis differ in KMEANS_DEPLOYMENT and KMEANS_PORT_BASE (and KMEANS_HOME)
    deployment: str = Field(
        DEFAULT_DEPLOYMENT, pattern=DEPLOYMENT_PATTERN,
        description="Name of this deployment: the prefix of its PostgreSQL databases "
                    "(<deployment>_mlflow, <deployment>_airflow: `make prod-up`), of its Redis "
                    "stream and consumer group, and of its Feast project unless those are set "
                    "themselves. Lower-case letters, digits and _.")
    port_base: int | None = Field(
        None, ge=1024, le=65535 - max(PORT_OFFSETS.values()),
        description="First of the deployment's ports: Airflow's API server +0, `make "
                    "mlflow-ui` +1, Spark's UI +2, the stack's MLflow server +3 and inference "
                    "server +4. Unset: 8080, 5000, 4040, 5050, 8090. A port's own setting wins.")
    airflow_port: int = Field(  # type: ignore[assignment]
        None, ge=1, le=65535, validate_default=False,
        description="Port of Airflow's API server (`make airflow-ui`, `make prod-up`); its URL, "
                    "the tasks' execution API and the review links all follow it. Default: "
                    "Airflow's own AIRFLOW__API__PORT when set, else from port_base, else 8080.")
    mlflow_ui_port: int = Field(  # type: ignore[assignment]
        None, ge=1, le=65535, validate_default=False,
        description="Port of `make mlflow-ui` (MLFLOW_UI_PORT=... there). Default: from "
                    "port_base, else 5000.")
    spark_ui_port: int = Field(  # type: ignore[assignment]
        None, ge=0, le=65535, validate_default=False,
        description="Port of the Spark driver's web UI; 0 switches the UI off. Default: from "
                    "port_base, else 4040 (Spark tries the next ports when it is taken).")

    _explicit: frozenset[str] = PrivateAttr(default_factory=frozenset)

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_env(cls, data):
        known = {f"KMEANS_{name.upper()}" for name in cls.model_fields}
        unknown = sorted(k for k in os.environ if k.startswith("KMEANS_") and k not in known
                         and k not in _NOT_SETTINGS)
        if unknown:
            raise ValueError(f"unknown settings {unknown} in the environment; known: "
                             f"{sorted(known)}")
        return data

    @field_validator("offline_uri")
    @classmethod
    def _store_uri(cls, value: str | None) -> str | None:
        """An object-store URI with a bucket (``s3://bucket/prefix``), or an absolute path."""
        if value is None or "://" not in value:
            if value is not None and not Path(value).expanduser().is_absolute():
                raise ValueError(f"KMEANS_OFFLINE_URI {value!r}: a URI (s3://bucket/prefix) or "
                                 "an absolute path")
            return value
        scheme, _, rest = value.partition("://")
        if scheme not in STORE_SCHEMES or not rest.split("?", 1)[0].strip("/"):
            raise ValueError(f"KMEANS_OFFLINE_URI {value.split('?', 1)[0]!r}: expected "
                             f"<scheme>://<bucket>[/prefix] with a scheme of "
                             f"{sorted(STORE_SCHEMES)}")
        return value

    @field_validator("serving_token", "admin_token")
    @classmethod
    def _token_is_usable(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None:
            return None
        name = f"KMEANS_{(info.field_name or '').upper()}"
        problem = token_problem(value.get_secret_value())
        if problem:
            raise ValueError(f"{name} {problem}")
        return value

    @model_validator(mode="after")
    def _fill_deployment(self) -> Settings:
        """The names and ports a deployment derives (:data:`PORT_OFFSETS`); which of them were
        given, not derived, is kept for :meth:`explicit`."""
        given = {n for n in ("feast_project", "stream_name", "stream_group", "airflow_port",
                             "mlflow_ui_port", "spark_ui_port") if getattr(self, n) is not None}
        if "deployment" in self.model_fields_set:
            given.add("deployment")
        if self.port_base is not None:
            given.add("port_base")
        name = self.deployment
        if self.feast_project is None:
            self.feast_project = ("customer_segments" if name == DEFAULT_DEPLOYMENT
                                  else f"{name}_customer_segments")
        if self.stream_name is None:
            self.stream_name = f"{name}:customer_events"
        if self.stream_group is None:
            self.stream_group = f"{name}-consumer"
        if self.airflow_port is None:
            airflow_own = os.environ.get("AIRFLOW__API__PORT")
            if airflow_own:
                try:
                    self.airflow_port = int(airflow_own)
                except ValueError:
                    raise ValueError(f"AIRFLOW__API__PORT {airflow_own!r} is no port") from None
                given.add("airflow_port")
            else:
                self.airflow_port = self.deployment_port("airflow")
        if self.mlflow_ui_port is None:
            self.mlflow_ui_port = self.deployment_port("mlflow_ui")
        if self.spark_ui_port is None:
            self.spark_ui_port = self.deployment_port("spark_ui")
        self._explicit = frozenset(given)
        return self

    def deployment_port(self, name: str) -> int:
        """The port ``name`` of :data:`PORT_OFFSETS` as the port base gives it (its default
        without one); the port's own setting is not looked at."""
        if self.port_base is None:
            return DEFAULT_PORTS[name]
        return self.port_base + PORT_OFFSETS[name]

    def explicit(self, name: str) -> bool:
        """Whether the deployment setting ``name`` was given (by an argument, KMEANS_* or, for
        airflow_port, AIRFLOW__API__PORT) rather than derived."""
        return name in self._explicit

    @property
    def airflow_url(self) -> str:
        """The Airflow API server's URL (:func:`airflow_url` of :attr:`airflow_port`)."""
        return airflow_url(self.airflow_port)

    @model_validator(mode="after")
    def _fill_and_check(self) -> Settings:
        self.home = self.home.expanduser().resolve()
        self.lake_dir = (self.lake_dir or self.home / "lake").expanduser().resolve()
        if str(self.stage_dir) != EXECUTOR_STAGE_DIR:
            self.stage_dir = (self.stage_dir or self.home / "blocks").expanduser().resolve()
        if self.mlflow_tracking_uri is None:
            self.mlflow_tracking_uri = f"sqlite:///{self.home / 'mlflow.db'}"
        if (self.serving_token is not None and self.admin_token is not None
                and self.serving_token.get_secret_value() == self.admin_token.get_secret_value()):
            raise ValueError("KMEANS_ADMIN_TOKEN equals KMEANS_SERVING_TOKEN: every prediction "
                             "client could drive the admin API; use two different tokens")
        sql = {"KMEANS_SQL_URL": self.sql_url, "KMEANS_SQL_TABLE": self.sql_table,
               "KMEANS_SQL_WATERMARK": self.sql_watermark}
        unset = [name for name, value in sql.items() if value is None]
        if 0 < len(unset) < len(sql):
            raise ValueError(f"the SQL source needs {', '.join(sql)} together; {', '.join(unset)} "
                             f"{'is' if len(unset) == 1 else 'are'} unset")
        if self.profile == "production":
            missing = [n for n in ("serving_token", "admin_token") if getattr(self, n) is None]
            if missing:
                raise ValueError(
                    "profile=production needs " + ", ".join(f"KMEANS_{m.upper()}" for m in missing)
                )
            if self.mlflow_tracking_uri.startswith("sqlite"):
                raise ValueError(
                    "profile=production needs an MLflow server: set KMEANS_MLFLOW_TRACKING_URI, "
                    f"got {self.mlflow_tracking_uri!r}"
                )
        return self

    # Derived locations; the folders are created by the stage that writes them, not here.
    @property
    def block_stage_dir(self) -> str:
        """The engine's stage dir: a path, or "" for each executor's own local dirs."""
        return "" if str(self.stage_dir) == EXECUTOR_STAGE_DIR else str(self.stage_dir)

    @property
    def predictions_dir(self) -> Path:
        return self.lake_dir / "predictions"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def offline_dir(self) -> Path:
        """Offline feature tables. The Feast FileSource's declared path is relative to the
        feature repo (``../.kmeans/offline/...``, the default home); ``apply_repo`` points it at
        this folder for any other home."""
        return self.home / "offline"

    @property
    def offline_root(self) -> StorePath:
        """The offline feature tables' folder: ``offline_uri``, else :attr:`offline_dir`."""
        try:
            return StorePath.at(self.offline_uri or self.offline_dir)
        except (ValueError, OSError) as err:  # pyarrow's ArrowInvalid is a ValueError
            raise ValueError(f"offline tables {self.offline_uri!r} (KMEANS_OFFLINE_URI): not a "
                             f"URI pyarrow.fs opens: {' '.join(str(err).split())[:300]}") from err

    @property
    def snapshots_dir(self) -> Path:
        return self.home / "snapshots"

    @property
    def snapshots_location(self) -> str:
        """Where training snapshots are written: ``snapshots_uri``, else the local folder."""
        return self.snapshots_uri or str(self.snapshots_dir)

    @property
    def rejected_dir(self) -> Path:
        return self.home / "rejected"

    @property
    def feast_dir(self) -> Path:
        return self.home / "feast"

    @property
    def artifact_root(self) -> Path:
        return self.home / "mlartifacts"


def token_problem(token: str) -> str | None:
    """What makes ``token`` unusable as a bearer token, or None. Never quotes the token."""
    if not token:
        return ("is set but empty, which is not the same as unset: set a non-empty token, or "
                "unset it to run without one (local profile only)")
    bad = next((i for i, c in enumerate(token) if not 33 <= ord(c) <= 126), None)
    if bad is not None:
        return (f"has a space, control or non-ASCII character at position {bad} (of "
                f"{len(token)}); a bearer token is printable ASCII without spaces")
    return None


def load_settings(**overrides) -> Settings:
    """Read the settings from the environment; keyword arguments win over it."""
    return Settings(**overrides)


if __name__ == "__main__":  # the Makefile: `python -m pipeline.core.settings mlflow_ui_port`
    import sys

    print(*(getattr(load_settings(), name) for name in sys.argv[1:]))
