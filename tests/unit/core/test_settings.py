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
    assert s.home == tmp_path and s.serving.max_batch_rows == 17


def test_unknown_setting_is_refused(tmp_path):
    with pytest.raises(ValidationError, match="extra"):
        load_settings(home=tmp_path, no_such_setting=1)


def test_unknown_environment_setting_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("KMEANS_SPARK_PARTITION", "8")  # typo of KMEANS_SPARK_PARTITIONS
    with pytest.raises(ValidationError, match=r"unknown settings \['KMEANS_SPARK_PARTITION'\]"):
        load_settings(home=tmp_path)


def test_production_needs_tokens_and_server(tmp_path):
    with pytest.raises(ValidationError, match="KMEANS_SERVING_TOKEN, KMEANS_ADMIN_TOKEN"):
        load_settings(home=tmp_path, profile="production")
    # The README and the InferenceService say both tokens are required: so do the settings.
    with pytest.raises(ValidationError, match="profile=production needs KMEANS_ADMIN_TOKEN"):
        load_settings(home=tmp_path, profile="production", serving_token="tok-serving-123",
                      mlflow_tracking_uri="postgresql://mlflow@127.0.0.1/mlflow")
    with pytest.raises(ValidationError, match="MLflow server"):
        load_settings(home=tmp_path, profile="production", serving_token="a", admin_token="b")
    s = load_settings(home=tmp_path, profile="production", serving_token="tok-serving-123",
                      admin_token="tok-admin-456",
                      mlflow_tracking_uri="postgresql://mlflow@127.0.0.1/mlflow")
    assert "tok-serving-123" not in repr(s), "tokens must not leak in reprs"
    assert "tok-admin-456" not in repr(s)


@pytest.mark.parametrize("variable", ["KMEANS_SERVING_TOKEN", "KMEANS_ADMIN_TOKEN"])
@pytest.mark.parametrize("profile", ["local", "production"])
def test_an_empty_token_is_refused_not_taken_as_unset(monkeypatch, tmp_path, variable, profile):
    """`KMEANS_SERVING_TOKEN=` once served predictions without any Authorization header."""
    monkeypatch.setenv(variable, "")
    with pytest.raises(ValidationError, match=f"{variable} is set but empty, which is not the "
                                              "same as unset"):
        load_settings(home=tmp_path, profile=profile)


@pytest.mark.parametrize("token, where", [(" ", 0), ("tok en", 3), ("token\n", 5),
                                          ("tök", 1), ("\t", 0)])
def test_a_token_a_header_cannot_carry_is_refused_without_echoing_it(tmp_path, token, where):
    with pytest.raises(ValidationError) as err:
        load_settings(home=tmp_path, serving_token=token)
    text = str(err.value)
    assert f"KMEANS_SERVING_TOKEN has a space, control or non-ASCII character at position " \
           f"{where} (of {len(token)})" in text
    assert repr(token) not in text and "input_value" not in text, "a refused token is not echoed"


def test_the_admin_token_must_differ_from_the_serving_token(tmp_path):
    with pytest.raises(ValidationError, match="KMEANS_ADMIN_TOKEN equals KMEANS_SERVING_TOKEN"):
        load_settings(home=tmp_path, serving_token="same-token", admin_token="same-token")


def test_serving_limits_are_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("KMEANS_BODY_TIMEOUT_SECONDS", "2.5")
    monkeypatch.setenv("KMEANS_MAX_HEADER_BYTES", "8192")
    s = load_settings(home=tmp_path)
    serving = s.serving
    assert (serving.body_timeout_seconds, serving.max_header_bytes, serving.header_timeout_seconds,
            serving.admin_max_concurrency, serving.range_tolerance) == (2.5, 8192, 10.0, 4, 10.0)
    with pytest.raises(ValidationError, match="body_timeout_seconds"):
        load_settings(home=tmp_path, body_timeout_seconds=0)
    with pytest.raises(ValidationError, match="max_header_bytes"):
        load_settings(home=tmp_path, max_header_bytes=100)


@pytest.mark.parametrize("uri, message", [
    ("foo://bucket/x", "expected <scheme>://<bucket>"),
    ("s3://", "expected <scheme>://<bucket>"),
    ("s3:///?endpoint_override=h:1", "expected <scheme>://<bucket>"),
    ("relative/offline", "a URI .* or an absolute path"),
])
def test_an_offline_uri_without_a_store_or_bucket_is_refused(tmp_path, uri, message):
    with pytest.raises(ValueError, match=message):
        load_settings(home=tmp_path, offline_uri=uri)


def test_the_offline_root_is_the_uri_without_its_options(tmp_path):
    s = load_settings(home=tmp_path,
                      offline_uri="s3://b/off?endpoint_override=127.0.0.1:1&scheme=http")
    assert str(s.offline_root / "customer_profile") == "s3://b/off/customer_profile"
    assert str(load_settings(home=tmp_path).offline_root) == str(tmp_path / "offline")
