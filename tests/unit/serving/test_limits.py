"""The serving limits that need no server (issue 23): clipped reprs of values nested as deep as
JSON parsers allow, the production profile's token length, the drain of the grace period."""

from __future__ import annotations

import pytest

from pipeline.core.settings import load_settings
from pipeline.serving.errors import brief
from pipeline.serving.server import drain_seconds, token_problems


def _nested(levels: int, inner=1):
    value = inner
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("value", [_nested(1000), {"a": _nested(1000)}, _nested(5000, "x" * 9)])
def test_brief_shows_the_first_levels_of_a_value_too_deep_for_repr(value):
    text = brief(value)
    assert text.endswith("… (nested too deeply to show)")
    assert len(text) < 200


def test_brief_is_repr_for_what_repr_can_show():
    assert brief([1, 2]) == "[1, 2]"
    assert brief("x" * 10_000) == f"'{'x' * 79}… (10002 characters)"
    assert brief(_nested(10)) == repr(_nested(10))


def test_production_tokens_need_16_characters(tmp_path):
    def settings(**tokens):
        return load_settings(home=tmp_path, profile="production",
                             mlflow_tracking_uri="postgresql://mlflow@127.0.0.1/mlflow", **tokens)

    short = settings(serving_token="t", admin_token="admin-token-0123456789")
    assert token_problems(short) == (
        "KMEANS_SERVING_TOKEN has 1 characters; the production profile needs at least 16 "
        "(e.g. `openssl rand -hex 24`)")
    assert "KMEANS_ADMIN_TOKEN has 15" in token_problems(
        settings(serving_token="serving-token-0123456789", admin_token="a" * 15))
    assert token_problems(settings(serving_token="s" * 16, admin_token="a" * 16)) is None
    assert token_problems(load_settings(home=tmp_path, serving_token="t")) is None  # local


@pytest.mark.parametrize("grace, drain", [(20.0, 18), (3.0, 1), (6.5, 4)])
def test_the_drain_leaves_time_to_exit_within_the_grace_period(grace, drain):
    assert drain_seconds(grace) == drain
