"""Property-based fuzzing of the live server from its own OpenAPI document (schemathesis).

The document derives from the route table the server routes with (pipeline/serving/routes.py).
Every operation gets generated requests, valid and invalid; the server must never answer 5xx,
and what it answers must match the document (status codes, content types, response schemas).
"""

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pipeline.core.settings import ServingSettings
from pipeline.serving.app import InferenceApp
from pipeline.serving.model import SegmentService
from pipeline.serving.openapi import document
from pipeline.serving.routes import ROUTES
from pipeline.serving.server import running
from tests.helpers.serving import NAME, make_model

TOKEN, ADMIN = "fuzz-predict", "fuzz-admin"


@pytest.fixture(scope="module")
def live(snapshot_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    service = SegmentService(NAME, max_batch_rows=1000)
    service.load(make_model(snapshot_path, root / "a", seed=0), "1")
    service.load(make_model(snapshot_path, root / "b", seed=1), "2", "canary")
    app = InferenceApp(service, ServingSettings(serving_token=TOKEN, admin_token=ADMIN,
                                              max_body_bytes=256 * 1024))
    with running(app) as url:
        yield url


# The document the server serves is built from the route table and the model name alone, so the
# schema is loaded at collection time (schemathesis' lazy fixture loader does not support pytest
# 9 yet).
schema = schemathesis.openapi.from_dict(document(NAME))


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_5xx_and_answers_match_the_document(case, live):
    token = ADMIN if case.path.startswith("/admin") else TOKEN
    case.call_and_validate(base_url=live, headers={"Authorization": f"Bearer {token}"},
                           checks=[not_a_server_error, status_code_conformance,
                                   content_type_conformance, response_schema_conformance])


def test_the_document_covers_every_route(live):
    doc = httpx.get(f"{live}/openapi.json").json()
    assert doc == document(NAME)
    assert sorted(doc["paths"]) == sorted(route.path for route in ROUTES)
    for path in ("/v2/models/{name}/infer", "/v1/models/{name}:predict", "/admin/load",
                 "/admin/traffic", "/admin/promote", "/admin/drop", "/admin/window", "/metrics"):
        assert path in doc["paths"], path
    # The fuzzing above (same module, same server) really reached the server.
    metrics = httpx.get(f"{live}/metrics").text
    sent = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("kmeans_requests_total{"))
    assert sent >= 300
