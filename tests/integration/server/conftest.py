"""The server tests' shared fixtures: a tiny model and the real server on loopback serving it
(a module that needs another model or app defines its own ``model``/``server``)."""

import pytest

from pipeline.serving.server import running
from tests.helpers.serving import make_app, tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny-model") / "m")


@pytest.fixture(scope="module")
def server(model):
    with running(make_app(model)) as url:
        yield url
