"""Typed settings, loaded explicitly, never at import.

All values come from ``KMEANS_*`` environment variables (or a ``.env`` file) on top of the defaults
of the active profile. ``local`` (the default) needs no servers: SQLite for MLflow and the Feast
online store, Parquet for the lake and the offline store, Spark ``local[*]``. ``production`` expects
an MLflow server, Redis for Feast, Spark on Kubernetes and a serving token.

The settings are grouped by the component that reads them, as MLServer groups its own: the
deployment's paths, stores, names and ports at the top, and one section each for serving,
monitoring, the promotion gates, the event stream, the SQL source and the rollout
(``settings.serving.max_body_bytes``), declared in :mod:`pipeline.core.sections`. A component
takes its section, not the whole. The variable names stay flat, ``KMEANS_`` + the field's name
(``KMEANS_MAX_BODY_BYTES``), whatever its section, and so do the keyword arguments of
:func:`load_settings`.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from pipeline.core.io import StorePath
from pipeline.core.sections import (
    ENV_PREFIX,
    SECTION_OF,
    SECTIONS,
    GateSettings,
    MonitoringSettings,
    RolloutSettings,
    ServingSettings,
    SqlSourceSettings,
    StreamSettings,
)

# Re-exported: callers import the token rule with the settings it checks.
from pipeline.core.sections import token_problem as token_problem

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
#: The Feast project of the default deployment; another deployment's is
#: ``<deployment>_customer_segments``. feature_repo/feature_store.yaml names the same project for
#: the stock `feast` CLI, and a test checks that it does.
DEFAULT_FEAST_PROJECT = "customer_segments"
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


def default_feast_project(deployment: str) -> str:
    """The Feast project of ``deployment`` when KMEANS_FEAST_PROJECT does not name one."""
    if deployment == DEFAULT_DEPLOYMENT:
        return DEFAULT_FEAST_PROJECT
    return f"{deployment}_{DEFAULT_FEAST_PROJECT}"


_SETTINGS_CONFIG = SettingsConfigDict(
    env_prefix=ENV_PREFIX, env_file=PROJECT_ROOT / ".env", extra="forbid",
    validate_default=True,
    # A refused value is named by its setting, never echoed: it may be a token.
    hide_input_in_errors=True,
)


class _FlatSource(BaseSettings):
    """The base of the flat class the environment and ``.env`` are read through
    (:func:`_flat_settings_class`)."""

    model_config = _SETTINGS_CONFIG


class Settings(BaseSettings):
    """Settings of one deployment of the platform: its paths, stores, names and ports, and one
    section per component (:data:`SECTIONS`)."""

    model_config = _SETTINGS_CONFIG

    profile: Literal["local", "production"] = Field(
        "local", description="local: embedded default, no servers; production: cluster services."
    )
    home: Path = Field(
        PROJECT_ROOT / ".kmeans",
        description="Working folder of the embedded default: lake, stores, reports, staged blocks.",
    )
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
    train_min_arrival_rows: int = Field(
        1000, ge=0, description="Fewest rows the landings that trigger a kmeans_training run "
                                "on data arrival (the features asset) must bring; a run "
                                "triggered by fewer is skipped (the daily run takes them in).")
    alias_lock_wait_seconds: float = Field(
        30.0, ge=0,
        description="How long registering a challenger waits for a promotion or rollback in "
                    "progress (promote and rollback themselves never wait).")
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
    # The sections (pipeline/core/sections.py): each field is set by its flat KMEANS_<FIELD>.
    serving: ServingSettings = Field(default_factory=ServingSettings,
                                     description=ServingSettings.__doc__)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings,
                                           description=MonitoringSettings.__doc__)
    gates: GateSettings = Field(default_factory=GateSettings, description=GateSettings.__doc__)
    stream: StreamSettings = Field(default_factory=StreamSettings,
                                   description=StreamSettings.__doc__)
    sql: SqlSourceSettings = Field(default_factory=SqlSourceSettings,
                                   description=SqlSourceSettings.__doc__)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings,
                                     description=RolloutSettings.__doc__)

    _explicit: frozenset[str] = PrivateAttr(default_factory=frozenset)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Read KMEANS_<FIELD> for every field of every section: the environment and ``.env``
        are read as if the settings were one flat class; :meth:`_route` then files each value
        under its section. Arguments still win over the environment, which wins over ``.env``."""
        flat = _flat_settings_class()
        env_file = getattr(dotenv_settings, "env_file", cls.model_config.get("env_file"))
        return (init_settings, EnvSettingsSource(flat),
                DotEnvSettingsSource(flat, env_file=env_file), file_secret_settings)

    @model_validator(mode="before")
    @classmethod
    def _route(cls, data: Any) -> Any:
        """Refuse unknown KMEANS_* variables, then move each flat name (``max_body_bytes``)
        into its section (``serving``); a flat name wins over the same field of a section
        given whole."""
        known = {f"{ENV_PREFIX}{name.upper()}" for name in setting_fields()}
        unknown = sorted(k for k in os.environ if k.startswith(ENV_PREFIX) and k not in known
                         and k not in _NOT_SETTINGS)
        if unknown:
            raise ValueError(f"unknown settings {unknown} in the environment; known: "
                             f"{sorted(known)}")
        if not isinstance(data, dict):
            return data
        routed = {key: value for key, value in data.items() if key not in SECTION_OF}
        for section in SECTIONS:  # a section given whole (a model or a dict) is copied, not changed
            routed[section] = dict(routed.get(section) or {})
        for key, value in data.items():
            if key in SECTION_OF:
                routed[SECTION_OF[key]][key] = value
        return routed

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

    @model_validator(mode="after")
    def _fill_deployment(self) -> Settings:
        """The names and ports a deployment derives (:data:`PORT_OFFSETS`); which of them were
        given, not derived, is kept for :meth:`explicit`."""
        stream = self.stream
        given = {n for n, v in (("feast_project", self.feast_project),
                                ("stream_name", stream.stream_name),
                                ("stream_group", stream.stream_group),
                                ("airflow_port", self.airflow_port),
                                ("mlflow_ui_port", self.mlflow_ui_port),
                                ("spark_ui_port", self.spark_ui_port)) if v is not None}
        if "deployment" in self.model_fields_set:
            given.add("deployment")
        if self.port_base is not None:
            given.add("port_base")
        name = self.deployment
        if self.feast_project is None:
            self.feast_project = default_feast_project(name)
        if stream.stream_name is None:
            stream.stream_name = f"{name}:customer_events"
        if stream.stream_group is None:
            stream.stream_group = f"{name}-consumer"
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
        if self.profile == "production":
            missing = [n for n in ("serving_token", "admin_token")
                       if getattr(self.serving, n) is None]
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

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with ``update`` applied; a flat name (``max_body_bytes``) updates the field
        of its section in a copy of that section, so the original is left as it was."""
        update = dict(update or {})
        sections: dict[str, dict[str, Any]] = {}
        for key in [k for k in update if k in SECTION_OF]:
            sections.setdefault(SECTION_OF[key], {})[key] = update.pop(key)
        for section, values in sections.items():
            current = update.get(section, getattr(self, section))
            update[section] = current.model_copy(update=values, deep=deep)
        return super().model_copy(update=update, deep=deep)

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


def setting_fields() -> dict[str, FieldInfo]:
    """Every setting's field by its flat name, the one KMEANS_<NAME> sets: the top-level ones
    and those of each section (a section itself is no setting).

    Examples
    --------
    >>> setting_fields()["max_body_bytes"].default
    4194304
    """
    fields = {name: field for name, field in Settings.model_fields.items()
              if name not in SECTIONS}
    for model in SECTIONS.values():
        fields.update(model.model_fields)
    return fields


_FLAT: list[type[BaseSettings]] = []


def _flat_settings_class() -> type[BaseSettings]:
    """A settings class with every setting as a top-level field, which the environment and
    ``.env`` sources read (they look up only a class's own fields); built once."""
    if not _FLAT:
        fields: dict[str, Any] = {name: (field.annotation, None)
                                  for name, field in setting_fields().items()}
        _FLAT.append(create_model("FlatSettings", __base__=_FlatSource, **fields))
    return _FLAT[0]


def setting(settings: Settings, name: str) -> Any:
    """The value of setting ``name``: a flat name (``serving_port``) or a dotted one
    (``serving.serving_port``), or a derived property (``airflow_url``)."""
    section, _, field = name.rpartition(".")
    if not section and name in SECTION_OF:
        section = SECTION_OF[name]
    owner = getattr(settings, section) if section else settings
    try:
        return getattr(owner, field)
    except AttributeError:
        raise ValueError(f"no setting {name!r}; known: {sorted(setting_fields())}") from None


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment; keyword arguments win over it. Arguments take
    the flat names (``load_settings(home=..., max_body_bytes=...)``): each goes to its section.

    Examples
    --------
    >>> load_settings(max_body_bytes=8192).serving.max_body_bytes
    8192
    """
    return Settings(**overrides)


if __name__ == "__main__":  # the Makefile: `python -m pipeline.core.settings mlflow_ui_port`
    import sys

    loaded = load_settings()
    print(*(setting(loaded, name) for name in sys.argv[1:]))
