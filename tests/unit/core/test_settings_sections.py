"""The settings' sections: flat KMEANS_* names and arguments, grouped fields, one home per fact."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from pipeline.core.settings import (
    DEFAULT_FEAST_PROJECT,
    PROJECT_ROOT,
    SECTION_OF,
    SECTIONS,
    ServingSettings,
    Settings,
    StreamSettings,
    default_feast_project,
    load_settings,
    setting,
    setting_fields,
)

# The KMEANS_* names a deployment sets: the grouping moved fields, it renamed none but this one.
RENAMED = {"monitor_max_novelty_rate": "monitor_max_ood_rate"}


def test_every_setting_has_one_flat_name_and_a_description():
    top = {name for name in Settings.model_fields if name not in SECTIONS}
    grouped = [name for model in SECTIONS.values() for name in model.model_fields]
    assert len(grouped) == len(set(grouped)) == len(SECTION_OF), "a name in two sections"
    assert not top & set(grouped), "a name both top-level and in a section"
    assert len(setting_fields()) == 91
    undocumented = [name for name, field in setting_fields().items() if not field.description]
    assert undocumented == []
    assert all(model.__doc__ for model in SECTIONS.values())


@pytest.mark.parametrize("name, section", [
    ("max_body_bytes", "serving"), ("prediction_log_sample_rate", "serving"),
    ("monitor_max_ood_rate", "monitoring"), ("shadow_half_life_points", "monitoring"),
    ("gate_min_silhouette_lo", "gates"), ("drift_share_threshold", "gates"),
    ("stream_name", "stream"), ("stream_drain_seconds", "stream"), ("sql_url", "sql"),
    ("rollout_steps", "rollout"), ("serving_url", "rollout"), ("watch_hours", "rollout"),
    ("kserve_name", "rollout"),
])
def test_a_setting_lives_in_its_components_section(name, section):
    assert SECTION_OF[name] == section


def test_flat_arguments_and_variables_go_to_their_section(monkeypatch, tmp_path):
    monkeypatch.setenv("KMEANS_MAX_BATCH_ROWS", "17")
    monkeypatch.setenv("KMEANS_MONITOR_MAX_OOD_RATE", "0.07")
    s = load_settings(home=tmp_path, max_body_bytes=2048, rollout_steps="shadow,100")
    assert (s.serving.max_batch_rows, s.serving.max_body_bytes) == (17, 2048)
    assert s.monitoring.monitor_max_ood_rate == 0.07
    assert s.rollout.rollout_steps == "shadow,100"
    # an argument wins over the environment, as before the grouping
    assert load_settings(home=tmp_path, max_batch_rows=5).serving.max_batch_rows == 5


def test_the_env_file_is_read_with_flat_names_and_stays_strict(tmp_path):
    good = tmp_path / "good.env"
    good.write_text("KMEANS_MAX_BODY_BYTES=5000\nKMEANS_STREAM_NAME=mine\n")
    s = Settings(_env_file=good, home=tmp_path)  # type: ignore[call-arg]
    assert (s.serving.max_body_bytes, s.stream.stream_name) == (5000, "mine")
    assert s.explicit("stream_name")
    bad = tmp_path / "bad.env"
    bad.write_text("KMEANS_MAX_BODY_BYTE=5000\n")
    with pytest.raises(ValidationError, match="kmeans_max_body_byte"):
        Settings(_env_file=bad, home=tmp_path)  # type: ignore[call-arg]


def test_the_former_name_of_the_ood_threshold_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("KMEANS_MONITOR_MAX_NOVELTY_RATE", "0.1")
    with pytest.raises(ValidationError, match=r"unknown settings \['KMEANS_MONITOR_MAX_NOVELTY"):
        load_settings(home=tmp_path)


def test_a_section_variable_is_no_setting(monkeypatch, tmp_path):
    """KMEANS_SERVING is a section's name, not a variable: refused like any unknown one."""
    monkeypatch.setenv("KMEANS_SERVING", "{}")
    with pytest.raises(ValidationError, match=r"unknown settings \['KMEANS_SERVING'\]"):
        load_settings(home=tmp_path)


def test_a_section_stands_alone_with_the_settings_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("KMEANS_MAX_BODY_BYTES", "9999")  # a section built directly reads no env
    assert ServingSettings(max_body_bytes=1024).max_body_bytes == 1024
    defaults = load_settings(home=tmp_path, max_body_bytes=ServingSettings().max_body_bytes)
    for name, section in SECTIONS.items():
        got, alone = getattr(defaults, name), section()
        derived = {"stream_name", "stream_group"} if section is StreamSettings else set()
        assert {k: v for k, v in got if k not in derived} == \
               {k: v for k, v in alone if k not in derived}, name
    with pytest.raises(ValidationError, match="max_body_bytes"):
        ServingSettings(max_body_bytes=10)
    with pytest.raises(ValidationError, match="extra"):
        ServingSettings(max_body_byte=4096)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="KMEANS_ADMIN_TOKEN equals KMEANS_SERVING_TOKEN"):
        ServingSettings(serving_token="same-token", admin_token="same-token")


def test_the_sql_source_needs_its_fields_together(tmp_path):
    with pytest.raises(ValidationError, match="KMEANS_SQL_WATERMARK is unset"):
        load_settings(home=tmp_path, sql_url="postgresql://u@h/db", sql_table="t")
    s = load_settings(home=tmp_path, sql_url="postgresql://u@h/db", sql_table="t",
                      sql_watermark="ts")
    assert "u@h" not in repr(s)


def test_a_copy_takes_flat_names_and_leaves_the_original(tmp_path):
    s = load_settings(home=tmp_path)
    strict = s.model_copy(update={"gate_min_silhouette_lo": 0.9, "reports_url": "http://x/"})
    assert (strict.gates.gate_min_silhouette_lo, strict.reports_url) == (0.9, "http://x/")
    assert (s.gates.gate_min_silhouette_lo, s.reports_url) == (0.2, None)


def test_the_command_line_prints_flat_and_dotted_names(tmp_path):
    s = load_settings(home=tmp_path, serving_port=8123)
    assert setting(s, "serving.serving_port") == setting(s, "serving_port") == 8123
    assert setting(s, "mlflow_ui_port") == 5000 and setting(s, "airflow_url").startswith("http")
    with pytest.raises(ValueError, match="no setting 'serving.nope'"):
        setting(s, "serving.nope")


def test_the_feast_project_has_one_home(tmp_path):
    """Settings derive it; feature_store.yaml (for the stock `feast` CLI) names the same."""
    declared = yaml.safe_load((PROJECT_ROOT / "feature_repo" / "feature_store.yaml").read_text())
    assert declared["project"] == DEFAULT_FEAST_PROJECT
    assert load_settings(home=tmp_path).feast_project == DEFAULT_FEAST_PROJECT
    assert load_settings(home=tmp_path, deployment="blue").feast_project == \
        default_feast_project("blue") == f"blue_{DEFAULT_FEAST_PROJECT}"
