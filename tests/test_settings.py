import pytest
from pydantic import ValidationError

from pipeline.core.settings import load_settings


def test_defaults_derive_paths_from_home(tmp_path):
    s = load_settings(home=tmp_path)
    assert s.profile == "local"
    assert s.lake_dir == tmp_path / "lake"
    assert s.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert not (tmp_path / "lake").exists(), "loading settings must not create folders"


def test_environment_prefix(monkeypatch, tmp_path):
    monkeypatch.setenv("KMEANS_HOME", str(tmp_path))
    monkeypatch.setenv("KMEANS_MAX_BATCH_ROWS", "17")
    s = load_settings()
    assert s.home == tmp_path and s.max_batch_rows == 17


def test_unknown_setting_is_refused(tmp_path):
    with pytest.raises(ValidationError, match="extra"):
        load_settings(home=tmp_path, no_such_setting=1)


def test_unknown_environment_setting_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("KMEANS_SPARK_PARTITION", "8")  # typo of KMEANS_SPARK_PARTITIONS
    with pytest.raises(ValidationError, match=r"unknown settings \['KMEANS_SPARK_PARTITION'\]"):
        load_settings(home=tmp_path)


def test_production_needs_tokens_and_server(tmp_path):
    with pytest.raises(ValidationError, match="KMEANS_SERVING_TOKEN"):
        load_settings(home=tmp_path, profile="production")
    with pytest.raises(ValidationError, match="MLflow server"):
        load_settings(home=tmp_path, profile="production", serving_token="a", admin_token="b")
    s = load_settings(home=tmp_path, profile="production", serving_token="tok-serving-123",
                      mlflow_tracking_uri="postgresql://mlflow@127.0.0.1/mlflow")
    assert "tok-serving-123" not in repr(s), "tokens must not leak in reprs"
