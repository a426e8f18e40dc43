"""The inference server on a real loopback socket: both protocols, Feast lookups, bad input."""

import json

import httpx
import numpy as np
import pytest

from pipeline.artifact import SegmentModel
from pipeline.features import Snapshot, feature_store
from pipeline.preprocessing import Preprocessor
from pipeline.serving.app import create_app
from pipeline.serving.model import SegmentPredictor
from pipeline.serving.server import running
from tests.conftest import make_settings

pytestmark = pytest.mark.integration
NAME = "customer_segments"
TOKEN = "test-token-123"


@pytest.fixture(scope="module")
def model(snapshot_path, tmp_path_factory):
    frame = Snapshot.load(snapshot_path).frame()
    pre = Preprocessor.fit(frame)
    x = pre.transform(frame)
    centroids = x[np.random.default_rng(0).choice(len(x), 4, replace=False)]
    folder = SegmentModel(centroids, pre, {"distance_p99": 4.0}).save(
        tmp_path_factory.mktemp("model") / "m")
    return SegmentModel.load(folder)


@pytest.fixture(scope="module")
def server(model, lake_home):
    predictor = SegmentPredictor(NAME, feature_store=feature_store(make_settings(lake_home)),
                                 feature_service="customer_segments_v1", max_batch_rows=100)
    predictor.load(model, "7")
    app = create_app(predictor, token=TOKEN, max_body_bytes=64 * 1024)
    with running(app) as url:
        yield url


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {TOKEN}"},
                      timeout=10) as client:
        yield client


def _features(rows):
    return {"inputs": [{"name": "features", "datatype": "FP64",
                        "shape": [len(rows), len(rows[0])], "data": rows}]}


def test_health_and_metadata(http):
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.get(f"/v2/models/{NAME}/ready").json()["ready"] is True
    meta = http.get(f"/v2/models/{NAME}").json()
    assert meta["versions"] == ["7"] and meta["inputs"][0]["shape"] == [-1, 12]


def test_v2_infer_by_vector_matches_the_model(http, model):
    rows = (model.preprocessor.means + np.eye(12)[:3]).tolist()
    reply = http.post(f"/v2/models/{NAME}/infer", json=_features(rows)).json()
    out = {o["name"]: o["data"] for o in reply["outputs"]}
    expected = model.assign(np.asarray(rows))
    assert out["cluster"] == expected.cluster.tolist()
    assert np.allclose(out["distance"], expected.distance)
    assert reply["model_version"] == "7"
    assert set(out) == {"cluster", "distance", "runner_up", "margin", "ood"}


def test_v1_predict_by_customer_id_through_feast(http, model, lake_home):
    from pipeline.features import online_features

    reply = http.post(f"/v1/models/{NAME}:predict",
                      json={"instances": [{"customer_id": 100_001}, {"customer_id": 5}]})
    assert reply.status_code == 200
    first, unknown = reply.json()["predictions"]
    online = online_features(feature_store(make_settings(lake_home)), "customer_segments_v1",
                             [100_001])
    expected = model.assign(online[model.feature_names])
    assert first["cluster"] == int(expected.cluster[0])
    assert unknown == {"error": "customer_id 5 has no online features", "model_version": "7"}


def test_v2_infer_by_customer_id(http):
    body = {"inputs": [{"name": "customer_id", "datatype": "INT64", "shape": [2],
                        "data": [100_002, 100_003]}]}
    out = {o["name"]: o["data"] for o in http.post(f"/v2/models/{NAME}/infer", json=body)
           .json()["outputs"]}
    assert len(out["cluster"]) == 2 and "error" not in out


def test_v1_named_features_with_nulls(http):
    row = {"total_spend_30d": 120.0, "orders_30d": 3, "email_open_rate": None}
    reply = http.post(f"/v1/models/{NAME}:predict", json={"instances": [row]})
    assert reply.status_code == 200 and "cluster" in reply.json()["predictions"][0]


BAD = [
    ("/v2/models/customer_segments/infer", "not json", "application/json", 400,
     "body is not valid JSON"),
    ("/v2/models/customer_segments/infer", '{"inputs": [{"name": "features", "datatype": "FP64",'
     ' "shape": [1, 12], "data": [NaN, 1,1,1,1,1,1,1,1,1,1,1]}]}', "application/json", 400,
     "JSON constant NaN is not allowed"),
    ("/v2/models/customer_segments/infer", json.dumps(_features([[1.0] * 11])),
     "application/json", 400, "features have shape [1, 11]; this model takes [n, 12]"),
    ("/v2/models/customer_segments/infer", json.dumps(_features([["a"] * 12])),
     "application/json", 400, "feature values must be numbers or null, got 'a' (str)"),
    ("/v2/models/customer_segments/infer", json.dumps(
        {"inputs": [{"name": "features", "datatype": "BYTES", "shape": [1, 12],
                     "data": [1] * 12}]}), "application/json", 400,
     "features have datatype 'BYTES'; allowed: FP32, FP64"),
    ("/v2/models/customer_segments/infer", json.dumps(
        {"inputs": [{"name": "features", "datatype": "FP64", "shape": [0, 12], "data": []}]}),
     "application/json", 400, "the batch is empty; send at least 1 row"),
    ("/v2/models/customer_segments/infer", json.dumps(_features([[1.0] * 12] * 101)),
     "application/json", 400, "the batch has 101 rows; at most 100 allowed"),
    ("/v2/models/customer_segments/infer", json.dumps(_features([[1e309] * 12])),
     "application/json", 400, "JSON constant Infinity is not allowed"),
    ("/v2/models/customer_segments/infer", json.dumps(_features([[1.0] * 12])).replace(
        "1.0", "1e999", 1), "application/json", 400, "features contain infinity in rows [0]"),
    ("/v2/models/customer_segments/infer", "{}", "text/plain", 415,
     "content-type 'text/plain' is not supported"),
    ("/v2/models/customer_segments/infer", "{}", "application/json", 400,
     "body must be an object with 'inputs'"),
    ("/v2/models/other/infer", json.dumps(_features([[1.0] * 12])), "application/json", 404,
     "model 'other' is unknown"),
    ("/v1/models/customer_segments:predict", '{"instances": []}', "application/json", 400,
     "instances is empty"),
    ("/v1/models/customer_segments:predict", '{"instances": [{"customer_id": "x"}]}',
     "application/json", 400, "customer_id must be an integer, got 'x' (str)"),
    ("/v1/models/customer_segments:predict", '{"instances": [{"bogus": 1}]}',
     "application/json", 400, "instance 0 has unknown features ['bogus']"),
    ("/v1/models/customer_segments:predict", '{"instances": [[1, 2], [1]]}',
     "application/json", 400, "feature rows must all have the same length"),
    ("/v1/models/customer_segments:predict", '{"instances": [{"customer_id": 99999999999999999999}]}',
     "application/json", 400, "outside the 64-bit integer range"),
    ("/v1/models/customer_segments:predict", '{"instances": [[' + "1" * 400 + ']]}',
     "application/json", 400, "too large for a 64-bit float"),
    ("/v1/models/customer_segments:predict", "[" * 20_000 + "]" * 20_000,
     "application/json", 400, "nested too deeply"),
    ("/v2/models/customer_segments/infer", json.dumps(_features([[1.0] * 12] * 2000)),
     "application/json", 413, "exceeds the limit of 65536 bytes"),
]


@pytest.mark.parametrize("path, body, ctype, status, message", BAD)
def test_bad_input_gets_a_4xx_that_names_the_problem(http, path, body, ctype, status, message):
    reply = http.post(path, content=body, headers={"content-type": ctype})
    assert reply.status_code == status, reply.text
    assert message in reply.json()["error"]


def test_tokens(server):
    body = _features([[1.0] * 12])
    url = f"{server}/v2/models/{NAME}/infer"
    assert httpx.post(url, json=body).status_code == 401
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert httpx.get(f"{server}/v2/health/ready").status_code == 200, "probes need no token"


def test_metrics_count_requests_and_assignments(http):
    http.post(f"/v2/models/{NAME}/infer", json=_features([[1.0] * 12]))
    text = http.get("/metrics").text
    assert 'kmeans_requests_total{route="infer",status="200"}' in text
    assert 'kmeans_assignments_total{cluster=' in text


def test_not_ready_is_503(model):
    app = create_app(SegmentPredictor(NAME))
    with running(app) as url:
        assert httpx.get(f"{url}/v2/health/ready").status_code == 503
        reply = httpx.post(f"{url}/v2/models/{NAME}/infer", json=_features([[1.0] * 12]))
        assert reply.status_code == 503 and "not loaded yet" in reply.json()["error"]
