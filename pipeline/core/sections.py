"""The sections of the settings: one pydantic model per component that reads them.

:class:`~pipeline.core.settings.Settings` holds one of each (``settings.serving``,
``settings.monitoring``, ...) and reads their fields from flat ``KMEANS_<FIELD>`` variables; a
component takes its section, and a test or a tool can build one on its own with keyword
arguments (``ServingSettings(max_body_bytes=1024)``), which reads no environment. A field's
name is its variable's name without the prefix, whatever its section, so no two sections (nor
the top level of the settings) may share a name.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

#: Every setting is read from ENV_PREFIX + its field's name in capitals.
ENV_PREFIX = "KMEANS_"


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


class _Section(BaseModel):
    """A group of settings: strict like :class:`Settings`, and constructible on its own with
    keyword arguments (its defaults are the settings' defaults; no environment is read)."""

    model_config = ConfigDict(
        extra="forbid", validate_default=True,
        # A refused value is named by its setting, never echoed: it may be a token.
        hide_input_in_errors=True,
    )


class ServingSettings(_Section):
    """The inference server's address, tokens, limits and prediction log (``kmeans-serve``)."""

    serving_host: str = Field(default="127.0.0.1", description="Inference server bind address.")
    serving_port: int = Field(default=8080, ge=0, le=65535, description="Inference server port.")
    grpc_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="Port of the Open Inference Protocol's gRPC service "
                    "(inference.GRPCInferenceService), beside REST on serving_port; unset: no "
                    "gRPC. The InferenceService manifest sets 8081, as KServe does.")
    grpc_max_connection_age_seconds: float = Field(
        default=300.0, gt=0, le=86400,
        description="Longest life of a gRPC connection; then the server asks the client to "
                    "reconnect and gives its calls body_timeout_seconds to finish. Bounds a "
                    "stream that stalls mid-message, and spreads clients over replicas.")
    serving_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for predictions (printable ASCII, no spaces); unset: "
                    "predictions need no token (local profile only). Required in the "
                    "production profile; an empty value is refused, not taken as unset.")
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for the admin endpoints that change state (printable "
                    "ASCII, no spaces, not the serving token); unset: the admin API is "
                    "off. Required in the production profile.")
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024,
        description="Largest request body.")
    max_batch_rows: int = Field(default=10_000, ge=1, description="Largest batch in one request.")
    max_concurrency: int = Field(
        default=256, ge=1,
        description="Requests in flight before the server answers 503 (probes exempt)."
                    )
    max_header_bytes: int = Field(
        default=32 * 1024, ge=1024, le=1024 * 1024,
        description="Largest request line plus headers; larger heads get 431 and the "
                    "connection is closed.")
    header_timeout_seconds: float = Field(
        default=10.0, gt=0, le=3600,
        description="Time a request's line and headers may take to arrive (and an idle new "
                    "connection may wait); then 408 and the connection is closed.")
    body_timeout_seconds: float = Field(
        default=30.0, gt=0, le=3600,
        description="Time a request's body may take to arrive once its headers did; then 408 "
                    "and the connection is closed. A request takes a concurrency slot only "
                    "once its body is read.")
    admin_max_concurrency: int = Field(
        default=4, ge=1,
        description="Admin API requests in flight before it answers 503: a budget of "
                    "its own, apart from max_concurrency.")
    max_pipelined_requests: int = Field(
        default=16, ge=1, le=1024,
        description="Requests one connection may have read ahead of their answers (HTTP/1.1 "
                    "pipelining); beyond it the server stops reading from that connection "
                    "until its answers went out.")
    max_queued_requests: int = Field(
        default=1024, ge=1,
        description="Pipelined requests read ahead of their turn (waiting behind another "
                    "request of their connection), over all connections; beyond it the server "
                    "stops reading further ones until some have run.")
    max_lookup_ids: int = Field(
        default=1000, ge=1,
        description="Customer ids one request may look up in the online store; more get a 400 "
                    "naming this limit (feature vectors are bounded by max_batch_rows).")
    max_write_buffer_bytes: int = Field(
        default=256 * 1024, ge=16 * 1024, le=64 * 1024 * 1024,
        description="Answer bytes a connection may have waiting for its client to read them "
                    "(beyond the answer being written); above it the server reads no further "
                    "request from that connection and starts no further answer.")
    write_timeout_seconds: float = Field(
        default=30.0, gt=0, le=3600,
        description="Time a connection's unread answers (over max_write_buffer_bytes) may wait "
                    "without the client reading any of them; then the connection is closed and "
                    "the answers dropped.")
    shutdown_grace_seconds: float = Field(
        default=20.0, ge=3, le=3600,
        description="Time from SIGTERM to the server's exit: requests in flight get all but "
                    "the last 2 s of it to finish; what is still running then is cancelled. "
                    "The predictor's terminationGracePeriodSeconds is larger.")
    range_tolerance: float = Field(
        default=10.0, ge=0, le=1000,
        description="How far outside a feature's valid range (FEATURES min and max) a served "
                    "value may lie, in widths of that range: with 10 a share in [0, 1] is "
                    "accepted in [-10, 11]. Farther values, and values beyond float32, get a "
                    "400 naming the row and the feature.")
    prediction_log_sample_rate: float = Field(
        default=1.0, ge=0, le=1,
        description="Share of prediction requests the server writes to the prediction log "
                    "(<home>/predictions/hour=.../*.parquet), which the monitoring DAG reads; "
                    "0 turns the log off.")
    prediction_log_max_queue_rows: int = Field(
        default=100_000, ge=1,
        description="Rows the prediction log may hold in memory before it drops (and counts) "
                    "new ones rather than slow a request.")
    @field_validator("serving_token", "admin_token")
    @classmethod
    def _token_is_usable(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None:
            return None
        name = f"{ENV_PREFIX}{(info.field_name or '').upper()}"
        problem = token_problem(value.get_secret_value())
        if problem:
            raise ValueError(f"{name} {problem}")
        return value

    @model_validator(mode="after")
    def _tokens_differ(self) -> ServingSettings:
        if (self.serving_token is not None and self.admin_token is not None
                and self.serving_token.get_secret_value() == self.admin_token.get_secret_value()):
            raise ValueError("KMEANS_ADMIN_TOKEN equals KMEANS_SERVING_TOKEN: every prediction "
                             "client could drive the admin API; use two different tokens")
        return self


class MonitoringSettings(_Section):
    """The kmeans_monitoring DAG's thresholds (monitoring/drift.yaml documents the same figures)
    and the streaming shadow model's memory."""

    monitor_min_rows: int = Field(
        default=500, ge=1,
        description="Fewest champion rows in a monitoring window for it to be "
                    "judged; fewer: the window is reported as too_few_rows.")
    monitor_max_segment_psi: float = Field(
        default=0.2, gt=0,
        description="Monitoring: largest population stability index of the segment "
                    "shares against the champion's reference.")
    monitor_max_distance_ratio: float = Field(
        default=1.25, gt=0,
        description="Monitoring: largest ratio of the window's mean distance to "
                    "the assigned centroid over the reference's.")
    monitor_max_ood_rate: float = Field(
        default=0.05, ge=0, le=1,
        description="Monitoring: largest share of points beyond the "
                    "training 99th-percentile distance (1% expected).")
    monitor_max_low_margin_share: float = Field(
        default=0.15, ge=0, le=1,
        description="Monitoring: largest share of points closer to a "
                    "cluster boundary than the reference's 5th-percentile "
                    "margin (5% expected).")
    monitor_max_shadow_shift: float = Field(
        default=0.25, gt=0,
        description="Monitoring: largest shift of a centroid of the streaming "
                    "shadow model from the champion's, in the champion's mean "
                    "distance of a point to its centroid "
                    "(pipeline/monitoring/shadow.py).")
    monitor_retrain_cooldown_hours: float = Field(
        default=24.0, ge=0,
        description="Monitoring triggers kmeans_training at most once per this "
                    "many hours, however long the drift lasts.")
    shadow_half_life_points: float = Field(
        default=10_000.0, gt=0,
        description="Half-life, in accepted events, of the streaming shadow model's memory "
                    "(pipeline/monitoring/shadow.py): an event's weight halves after this many "
                    "newer ones. Shorter follows drift sooner and is noisier.")

class GateSettings(_Section):
    """The promotion gates: quality, comparison with the champion, and drift."""

    # Defaults sit below what the generated demo data gives (silhouette interval lower bound
    # about 0.27, Davies-Bouldin about 1.38, smallest cluster about 14%), so a healthy model
    # passes and a degenerate one does not.
    gate_min_silhouette_lo: float = Field(
        default=0.20, ge=-1, le=1,
        description="Quality gate: lowest allowed lower bound of the challenger's 95% bootstrap "
                    "silhouette interval on the holdout.")
    gate_max_davies_bouldin: float = Field(
        default=2.0, gt=0,
        description="Quality gate: highest allowed Davies-Bouldin index on the holdout.")
    gate_min_cluster_share: float = Field(
        default=0.01, ge=0, lt=1,
        description="Quality gate: smallest allowed share of training rows in any cluster "
                    "(an empty cluster, or a relocated one, is always refused).")
    gate_comparison_tolerance: float = Field(
        default=0.05, ge=0, le=1,
        description="Comparison gate: how much worse than the champion the challenger may score "
                    "on the same holdout, relative (silhouette and Davies-Bouldin).")
    drift_column_threshold: float = Field(
        default=0.1, gt=0,
        description="Drift gate: normalised Wasserstein distance above which a feature column "
                    "counts as drifted (monitoring/drift.yaml drift_column_threshold).")
    drift_share_threshold: float = Field(
        default=0.3, ge=0, le=1,
        description="Drift gate: share of drifted feature columns above which a person must "
                    "approve the model (monitoring/drift.yaml drift_share_threshold).")
    drift_sample_rows: int = Field(
        default=5000, ge=100,
        description="Rows of the reference sample kept with each registered model, and of the "
                    "new snapshot compared with it.")

class StreamSettings(_Section):
    """The event stream (pipeline/data/sources/stream.py, `kmeans consume`, the
    kmeans_ingest_stream DAG). Its stream and group names derive from the deployment in
    :class:`Settings`; a section built on its own leaves them None."""

    stream_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Event stream the consumer reads: redis://host:port/db (Redis Streams with "
                    "a consumer group, the embedded default) or kafka://host:port[,host:port] "
                    "(Kafka through confluent-kafka, the production profile).")
    stream_name: str = Field(  # type: ignore[assignment]
        default=None, min_length=1, validate_default=False,
        description="Redis stream key, or Kafka topic, of the customer events (default: "
                    "<deployment>:customer_events).")
    stream_group: str = Field(  # type: ignore[assignment]
        default=None, min_length=1, validate_default=False,
        description="Consumer group (Redis) or group.id (Kafka) of the stream consumer "
                    "(default: <deployment>-consumer).")
    stream_consumer: str | None = Field(
        default=None,
        description="This consumer's name in the group; stable across restarts so that "
                    "a restarted consumer re-reads its own unacknowledged events first "
                    "(default: the host name). Two consumers on one host need two names.")
    stream_batch_size: int = Field(
        default=1000, ge=1, le=100_000,
        description="Most events the consumer reads, lands, pushes and "
                    "acknowledges in one batch.")
    stream_claim_idle_seconds: float = Field(
        default=60.0, gt=0,
        description="Unacknowledged events of another consumer idle this long are "
                    "claimed (XAUTOCLAIM) and processed: that consumer is taken "
                    "for dead. Keep it well above a batch's processing time.")
    stream_segments: bool = Field(
        default=True,
        description="The consumer also assigns each fresh event with the champion and "
                    "pushes the customer's new segment to the customer_segment view "
                    "(near-real-time segments; off: features only).")
    stream_model_refresh_seconds: float = Field(
        default=10.0, gt=0,
        description="How often the consumer checks whether the champion moved; it "
                    "then assigns with the new version.")
    stream_drain_seconds: float = Field(
        default=300.0, gt=0, le=3300,
        description="Most seconds a kmeans_ingest_stream run drains the stream; it stops "
                    "earlier once it is caught up.")

class SqlSourceSettings(_Section):
    """The PostgreSQL source the kmeans_ingest_sql DAG lands (dags/kmeans_ingest.py)."""

    sql_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL source of the kmeans_ingest_sql DAG, "
                    "postgresql://user@host:port/db (a password is best given by "
                    "PGPASSWORD or ~/.pgpass); unset: that DAG skips. Set with "
                    "KMEANS_SQL_TABLE and KMEANS_SQL_WATERMARK. Not the stack's "
                    "KMEANS_POSTGRES_URL.")
    sql_table: str | None = Field(
        default=None, min_length=1,
        description="Table (schema.table) or SELECT query the "
                    "kmeans_ingest_sql DAG reads (`kmeans ingest-sql "
                    "--table`).")
    sql_watermark: str | None = Field(
        default=None, min_length=1,
        description="Timestamp column the kmeans_ingest_sql DAG reads the "
                    "rows of its interval by (`kmeans ingest-sql "
                    "--watermark`).")
    sql_source: str | None = Field(
        default=None, pattern=r"^[a-z0-9_]{1,64}$",
        description="Source name of the kmeans_ingest_sql DAG's landings (`kmeans ingest-sql "
                    "--source`); default: from the table name (a query needs one).")
    @model_validator(mode="after")
    def _together(self) -> SqlSourceSettings:
        sql = {"KMEANS_SQL_URL": self.sql_url, "KMEANS_SQL_TABLE": self.sql_table,
               "KMEANS_SQL_WATERMARK": self.sql_watermark}
        unset = [name for name, value in sql.items() if value is None]
        if 0 < len(unset) < len(sql):
            raise ValueError(f"the SQL source needs {', '.join(sql)} together; {', '.join(unset)} "
                             f"{'is' if len(unset) == 1 else 'are'} unset")
        return self


class RolloutSettings(_Section):
    """The rollout controller (where it moves traffic, its steps and their analysis) and the
    watch of a new champion."""

    rollout_backend: Literal["none", "local", "kubernetes"] = Field(
        default="none",
        description="Where the rollout controller moves traffic: 'local' (the inference "
                    "server's admin API at serving_url), 'kubernetes' (a KServe "
                    "InferenceService), or 'none' (registry aliases only).")
    serving_url: str | None = Field(
        default=None,
        description="Base URL of the inference server for the local backend "
                    "(default http://<serving_host>:<serving_port>).")
    rollout_steps: str = Field(
        default="shadow,10,50,100", description="Rollout steps: 'shadow' and canary percentages.")
    rollout_interval_seconds: float = Field(
        default=60.0, gt=0, description="Analysis interval of each rollout step.")
    rollout_min_agreement: float = Field(
        default=0.80, ge=0, le=1, description="Lowest assignment agreement a canary may show.")
    rollout_max_distance_shift: float = Field(
        default=0.25, ge=0,
        description="Largest relative shift of the canary's median distance.")
    kserve_namespace: str = Field(
        default="kmeans",
        description="Namespace of the InferenceService.")
    kserve_name: str = Field(
        default="customer-segments",
        description="Name of the InferenceService.")
    watch_hours: float = Field(
        default=6.0, ge=0,
        description="After a promotion, the new champion is watched this many "
                    "hours: a monitoring window that finds it degraded rolls it "
                    "back to 'previous' (0: no watch).")
    watch_max_error_rate: float = Field(
        default=0.01, ge=0, le=1,
        description="Watch: largest share of the champion's requests that "
                    "failed with a server error.")
    watch_max_p99_ms: float = Field(
        default=250.0, gt=0,
        description="Watch: largest p99 latency (ms) of the champion's requests.")

#: The sections of :class:`Settings` by attribute name (``settings.serving``, ...).
SECTIONS: dict[str, type[_Section]] = {
    "serving": ServingSettings, "monitoring": MonitoringSettings, "gates": GateSettings,
    "stream": StreamSettings, "sql": SqlSourceSettings, "rollout": RolloutSettings,
}
#: The section of each grouped setting, by its flat name (``max_body_bytes`` -> ``serving``).
SECTION_OF: dict[str, str] = {name: section for section, model in SECTIONS.items()
                              for name in model.model_fields}
