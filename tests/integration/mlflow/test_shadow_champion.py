"""The streaming shadow through a real MLflow registry: it follows the registry's champion, a
monitoring window turns its large gap into a retraining, and consumers that share its state
follow a promotion at once. (The shadow's maths and state: ``tests/unit/monitoring/
test_shadow.py``.)"""

from __future__ import annotations

import datetime as dt

import pytest

from tests.helpers.homes import make_settings
from tests.helpers.shadow import T0, fit_champion, stream_rows


@pytest.fixture(scope="module")
def champion():
    return fit_champion()


def test_a_large_gap_makes_the_window_ask_for_a_retraining(tmp_path, champion, monkeypatch):
    """A champion in a real MLflow registry, the shadow fed a stream where a quarter of the
    customers became a new kind: the window (no predictions in it) reports the gap, flags it
    as drift and the retraining decision names it."""

    from pipeline import registry
    from pipeline.data.datagen import Drift
    from pipeline.monitoring.actions import retrain_decision
    from pipeline.monitoring.shadow import Shadow
    from pipeline.monitoring.window import monitor_window, prometheus_path

    model, customers = champion
    monkeypatch.setenv("KMEANS_HOME", str(tmp_path / "home"))
    settings = make_settings(tmp_path / "home")
    version = _make_champion(settings, model, tmp_path / "artifact")
    shadow = Shadow(settings)  # the registry's champion, downloaded
    drift = Drift("new_segment", start=0)
    for p in range(2, 5):
        shadow.observe(stream_rows(customers, p, drift), now=T0 + dt.timedelta(minutes=10 * p))
    assert shadow.version == version

    end = T0 + dt.timedelta(hours=1)
    figures = monitor_window(settings, T0, end)
    assert figures["rows"] == 0 and figures["status"] == "drift", figures
    [reason] = figures["reasons"]
    assert reason.startswith("shadow_max_shift ") and reason.endswith(" > 0.25")
    assert figures["shadow"]["max_shift"] > 0.25
    assert figures["shadow"]["champion_version"] == version
    assert "kmeans_shadow_max_shift{" in prometheus_path(settings).read_text()
    conf = retrain_decision(settings, figures, actor="test", now=end)
    assert conf is not None and "shadow_max_shift" in conf["reason"]
    logged = registry.client(settings).get_run(figures["mlflow_run_id"]).data.metrics
    assert logged["shadow_max_shift"] == pytest.approx(figures["shadow"]["max_shift"])

    calm = monitor_window(settings, end, end + dt.timedelta(hours=1))  # no shadow record
    assert calm["status"] == "too_few_rows" and "shadow" not in calm
    strict = make_settings(tmp_path / "home", monitor_max_shadow_shift=50.0)
    assert monitor_window(strict, T0, end)["status"] == "too_few_rows"


def _make_champion(settings, model, folder) -> str:
    """Register ``model`` as a new version of the settings' registry and make it champion."""
    import mlflow

    from pipeline import registry

    with mlflow.start_run(experiment_id=registry.configure(settings)) as run:
        pass
    version = registry.log_model_version(settings, run.info.run_id, model.save(folder), {})
    registry.client(settings).set_registered_model_alias(settings.model_name, "champion",
                                                         version)
    return version


def test_a_consumer_that_sees_a_newer_champion_in_the_state_looks_it_up_at_once(
        tmp_path, champion, monkeypatch):
    """Two consumers share the shadow state. One follows version 1 and would look the alias
    up again only in an hour; the other, started after a promotion, saves a state of version
    2. The first looks the alias up at once (not after its hour) and carries the state on."""
    from pipeline.monitoring.shadow import Shadow, read_state, shadow_figures

    model, customers = champion
    monkeypatch.setenv("KMEANS_HOME", str(tmp_path / "home"))
    settings = make_settings(tmp_path / "home")
    first = _make_champion(settings, model, tmp_path / "v1")
    early = Shadow(settings, refresh_seconds=3600)
    rows = stream_rows(customers, 3).head(300)
    early.observe(rows, now=T0)
    assert early.version == first
    second = _make_champion(settings, model, tmp_path / "v2")
    late = Shadow(settings, refresh_seconds=3600)
    late.observe(rows, now=T0 + dt.timedelta(minutes=1))
    assert read_state(settings)["champion_version"] == late.version == second
    early.observe(rows, now=T0 + dt.timedelta(minutes=2))
    assert early.version == second and read_state(settings)["champion_version"] == second
    assert shadow_figures(settings)["points"] == 600  # carried on, not started again
