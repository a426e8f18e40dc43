"""The inference server on a real loopback socket: both protocols, Feast lookups, bad input,
tokens, limits, access logs, and a v2 client library written by others (tritonclient)."""

import concurrent.futures
import datetime as dt
import io
import json
import re

import httpx
import numpy as np
import pytest

from pipeline.core.settings import ServingSettings
from pipeline.data.features import feature_store, online_features
from pipeline.model import schema
from pipeline.serving.app import InferenceApp
from pipeline.serving.lookup import OnlineLookup
from pipeline.serving.model import SegmentService
from pipeline.serving.server import running
from tests.helpers.clock import END
from tests.helpers.homes import make_settings
from tests.helpers.serving import ADMIN, INFER, NAME, PREDICT, TOKEN, GatedLookup, make_model
from tests.helpers.waiting import wait_until

SERVICE = "customer_segments_v1"


@pytest.fixture(scope="module")
def model(snapshot_path, tmp_path_factory):
    return make_model(snapshot_path, tmp_path_factory.mktemp("model") / "m")


@pytest.fixture(scope="module")
def lookup(lake_home, model):
    return OnlineLookup(feature_store(make_settings(lake_home)), SERVICE, model.feature_names)


@pytest.fixture(scope="module")
def app(model, lookup):
    service = SegmentService(NAME, lookup=lookup, max_batch_rows=100)
    service.load(model, "7")
    return InferenceApp(service, ServingSettings(serving_token=TOKEN, admin_token=ADMIN,
                                                 max_body_bytes=64 * 1024))


@pytest.fixture(scope="module")
def server(app):
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


def _outputs(reply) -> dict:
    return {o["name"]: o["data"] for o in reply.json()["outputs"]}


def test_health_and_metadata(http):
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.get(f"/v2/models/{NAME}/ready").json()["ready"] is True
    assert http.get(f"/v1/models/{NAME}").json() == {"name": NAME, "ready": True}
    assert http.get("/v1/models").json() == {"models": [NAME]}
    assert http.get("/v2").json()["name"] == "kmeans-platform"
    meta = http.get(f"/v2/models/{NAME}").json()
    assert meta["versions"] == ["7"] and meta["inputs"][0]["shape"] == [-1, 12]
    # The model's outputs as pipeline.model.schema declares them, then the server's own.
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [
        *((c.name, c.v2) for c in schema.OUTPUTS),
        ("model_version", "BYTES"), ("stale", "BOOL"), ("error", "BYTES")]
    assert meta["parameters"]["routing"] == {"stable": "7", "canary": None, "weight": 0.0,
                                             "mode": "canary"}
    assert http.get(f"/v2/models/{NAME}/versions/7/ready").json() == {"name": NAME, "ready": True}


def test_v2_infer_by_vector_matches_the_model(http, model):
    rows = (model.preprocessor.means + np.eye(12)[:3]).tolist()
    reply = http.post(f"/v2/models/{NAME}/infer", json={**_features(rows), "id": "r1"})
    out = _outputs(reply)
    expected = model.assign(np.asarray(rows))
    assert out["cluster"] == expected.cluster.tolist()
    assert out["runner_up"] == expected.runner_up.tolist()
    assert np.allclose(out["distance"], expected.distance)
    assert np.allclose(out["margin"], expected.margin)
    assert out["model_version"] == ["7"] * 3
    assert reply.json()["model_version"] == "7" and reply.json()["id"] == "r1"
    assert set(out) == {"cluster", "distance", "runner_up", "margin", "ood", "model_version"}


def test_requested_outputs_and_pinned_version(http, model):
    body = {**_features([list(model.preprocessor.means)]), "outputs": [{"name": "cluster"}]}
    reply = http.post(f"/v2/models/{NAME}/versions/7/infer", json=body)
    assert [o["name"] for o in reply.json()["outputs"]] == ["cluster"]
    missing = http.post(f"/v2/models/{NAME}/versions/9/infer", json=body)
    assert missing.status_code == 404 and "version '9'" in missing.json()["error"]


def test_flat_row_major_data_and_fp32(http, model):
    rows = np.asarray(model.preprocessor.means) + np.eye(12)[:2]
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [2, 12],
                        "data": rows.ravel().tolist()}]}
    assert _outputs(http.post(f"/v2/models/{NAME}/infer", json=body))["cluster"] == \
        model.assign(rows).cluster.tolist()


def test_v1_predict_by_customer_id_through_feast(http, model, lake_home):
    reply = http.post(f"/v1/models/{NAME}:predict",
                      json={"instances": [{"customer_id": 100_002}, {"customer_id": 5}]})
    assert reply.status_code == 200
    first, unknown = reply.json()["predictions"]
    online = online_features(feature_store(make_settings(lake_home)), SERVICE, [100_002])
    expected = model.assign(online[model.feature_names])
    assert first["cluster"] == int(expected.cluster[0])
    assert first["distance"] == pytest.approx(float(expected.distance[0]))
    assert first["stale"] is False
    assert unknown == {"error": "customer_id 5 has no online features", "model_version": "7",
                       "stale": False}


def test_v2_infer_by_customer_id(http):
    body = {"inputs": [{"name": "customer_id", "datatype": "INT64", "shape": [3],
                        "data": [100_002, 42, 100_003]}]}
    out = _outputs(http.post(f"/v2/models/{NAME}/infer", json=body))
    assert out["cluster"][1] == -1 and out["distance"][1] is None
    assert out["error"] == ["", "customer_id 42 has no online features", ""]
    assert out["stale"] == [False, False, False]
    assert min(out["cluster"][0], out["cluster"][2]) >= 0


def test_lookup_matches_feast_and_flags_rows_older_than_the_ttl(lookup, lake_home):
    ids = [100_002, 42, 100_500, 101_499]
    sdk = online_features(feature_store(make_settings(lake_home)), SERVICE, ids)
    rows = lookup.fetch(ids)
    expected = sdk[lookup.feature_names].to_numpy(dtype=np.float64)
    assert np.allclose(rows.values, expected, equal_nan=True)
    assert rows.found.tolist() == [True, False, True, True]
    assert not rows.stale.any()
    # The feature view's TTL is 30 days: 31 days after the newest event every row is stale.
    later = END + dt.timedelta(days=31)
    aged = lookup.fetch(ids, now=later)
    assert aged.stale.tolist() == [True, False, True, True]
    assert np.nanmin(aged.age_seconds) > 30 * 86400


def test_v1_named_features_with_nulls(http, model):
    row = {"total_spend_30d": 120.0, "orders_30d": 3, "email_open_rate": None}
    reply = http.post(f"/v1/models/{NAME}:predict", json={"instances": [row]})
    assert reply.status_code == 200, reply.text
    # A null and an absent name are both missing values, imputed by the model.
    expected = model.assign(np.array([[row.get(n) for n in model.feature_names]], dtype=float))
    assert reply.json()["predictions"] == [{
        "model_version": "7", "cluster": int(expected.cluster[0]),
        "distance": pytest.approx(float(expected.distance[0])),
        "runner_up": int(expected.runner_up[0]),
        "margin": pytest.approx(float(expected.margin[0])), "ood": bool(expected.ood[0])}]


J = "application/json"
BAD = [
    (INFER, "not json", J, 400, "body is not valid JSON"),
    # NaN is a missing value (stock clients write it); Infinity is refused naming the feature
    (INFER, '{"inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 12], '
     '"data": [Infinity, 1,1,1,1,1,1,1,1,1,1,1]}]}', J, 400,
     "row 0: feature total_spend_30d: inf is not a finite number"),
    (INFER, json.dumps(_features([[1.0] * 11])), J, 400,
     "features have shape [1, 11]; this model takes [n, 12]"),
    (INFER, json.dumps(_features([["a"] * 12])), J, 400,
     "feature values must be numbers or null, got 'a' (str)"),
    (INFER, json.dumps(_features([[True] * 12])), J, 400,
     "feature values must be numbers or null, got True (bool)"),
    (INFER, json.dumps({"inputs": [{"name": "features", "datatype": "BYTES", "shape": [1, 12],
                                    "data": [1] * 12}]}), J, 400,
     "features has datatype 'BYTES'; allowed: FP32, FP64"),
    (INFER, json.dumps({"inputs": [{"name": "customer_id", "datatype": "FP32", "shape": [1],
                                    "data": [1]}]}), J, 400,
     "customer_id has datatype 'FP32'; allowed: INT64, INT32"),
    (INFER, json.dumps({"inputs": [{"name": "features", "datatype": "FP64", "shape": [0, 12],
                                    "data": []}]}), J, 400, "the batch is empty"),
    (INFER, json.dumps({"inputs": [{"name": "customer_id", "datatype": "INT64", "shape": [0],
                                    "data": []}]}), J, 400, "the batch is empty"),
    (INFER, json.dumps(_features([[1.0] * 12] * 101)), J, 400,
     "the batch has 101 rows; at most 100 allowed"),
    (INFER, json.dumps(_features([[1.0] * 12])).replace("1.0", "1e999", 1), J, 400,
     "row 0: feature total_spend_30d: inf is not a finite number"),
    (INFER, json.dumps({"inputs": [{"name": "features", "datatype": "FP64", "shape": [2, 12],
                                    "data": [1.0] * 12}]}), J, 400,
     "shape [2, 12] does not match 12 values"),
    (INFER, json.dumps({"inputs": [{"name": "features", "datatype": "FP64", "shape": "1x12",
                                    "data": [1.0] * 12}]}), J, 400,
     "shape '1x12' must be a list of non-negative integers"),
    (INFER, json.dumps({"inputs": [{"name": "age", "datatype": "FP64", "shape": [1],
                                    "data": [1.0]}]}), J, 400, "input name 'age' is not known"),
    (INFER, json.dumps({**_features([[1.0] * 12]), "outputs": [{"name": "score"}]}), J, 400,
     "requested outputs ['score'] are not produced"),
    (INFER, "{}", "text/plain", 415, "content-type 'text/plain' is not supported"),
    (INFER, "{}", J, 400, "body must be an object with 'inputs'"),
    ("/v2/models/other/infer", json.dumps(_features([[1.0] * 12])), J, 404,
     "model 'other' is unknown"),
    ("/v2/nothing/here", "{}", J, 404, "no route '/v2/nothing/here'"),
    (f"/v1/models/{NAME}:explain", "{}", J, 404, "verb 'explain' is not supported"),
    (PREDICT, '{"instances": []}', J, 400, "instances is empty"),
    (PREDICT, '{"instances": [{"customer_id": "x"}]}', J, 400,
     "customer_id must be an integer, got 'x' (str)"),
    (PREDICT, '{"instances": [{"bogus": 1}]}', J, 400, "instance 0 has unknown features ['bogus']"),
    (PREDICT, '{"instances": [[1, 2], [1]]}', J, 400,
     "feature rows must all be lists of the same length"),
    (PREDICT, '{"instances": [{"customer_id": 99999999999999999999}]}', J, 400,
     "customer_id must be an integer, got 1e+20 (float)"),
    # beyond float64: infinite, refused naming the row and the feature
    (PREDICT, '{"instances": [[' + "1" * 400 + ', 1,1,1,1,1,1,1,1,1,1,1]]}', J, 400,
     "row 0: feature total_spend_30d: inf is not a finite number"),
    (PREDICT, "[" * 20_000 + "]" * 20_000, J, 400, "depth limit exceeded"),
    (INFER, json.dumps(_features([[1.0] * 12] * 2000)), J, 413, "exceeds the limit of 65536 bytes"),
]


@pytest.mark.parametrize("path, body, ctype, status, message", BAD)
def test_bad_input_gets_a_4xx_that_names_the_problem(http, path, body, ctype, status, message):
    reply = http.post(path, content=body, headers={"content-type": ctype})
    assert reply.status_code == status, reply.text
    assert message in reply.json()["error"]


def test_wrong_method_and_head(http):
    reply = http.get(INFER)
    assert reply.status_code == 405 and "allowed: POST" in reply.json()["error"]
    live, head = http.get("/v2/health/live"), http.head("/v2/health/live")
    assert head.status_code == 200 and head.content == b"", "HEAD: GET's headers, no body"
    assert head.headers["content-length"] == str(len(live.content))
    assert head.headers["content-type"] == live.headers["content-type"] == "application/json"


def test_tokens(server):
    body = _features([[1.0] * 12])
    url = f"{server}{INFER}"
    missing = httpx.post(url, json=body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 403
    probe = httpx.get(f"{server}/v2/health/ready")
    assert probe.status_code == 200 and probe.json() == {"ready": True}, "probes need no token"
    # The admin API takes its own token: the prediction token does not open it.
    state = f"{server}/admin/state"
    assert httpx.get(state).status_code == 401
    assert httpx.get(state, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 403
    admin = httpx.get(state, headers={"Authorization": f"Bearer {ADMIN}"})
    assert admin.status_code == 200 and admin.json()["loaded"] == ["7"]


def test_admin_api_is_off_without_an_admin_token(model):
    service = SegmentService(NAME)
    service.load(model, "1")
    with running(InferenceApp(service)) as url:
        reply = httpx.post(f"{url}/admin/drop", json={})
        assert reply.status_code == 403 and "KMEANS_ADMIN_TOKEN" in reply.json()["error"]


def test_metrics_count_requests_and_assignments(http):
    http.post(INFER, json=_features([[1.0] * 12]))
    text = http.get("/metrics").text
    assert 'kmeans_requests_total{route="infer",status="200"}' in text
    assert 'kmeans_assignments_total{cluster=' in text
    assert 'kmeans_distance_bucket{le="0.25",model_version="7"}' in text
    assert 'kmeans_model_version{slot="stable"} 7.0' in text
    assert "kmeans_request_latency_seconds_bucket" in text


def test_access_log_is_json_with_the_request_id(model):
    service = SegmentService(NAME)
    service.load(model, "7")
    stream = io.BytesIO()
    with running(InferenceApp(service, access_log=stream)) as url:
        reply = httpx.post(f"{url}{INFER}", json=_features([[1.0] * 12]),
                           headers={"x-request-id": "req-42"})
        generated = httpx.get(f"{url}/v2/health/live").headers["x-request-id"]
        bad = httpx.post(f"{url}{INFER}", content="{", headers={"content-type": "text/plain"})
    assert reply.headers["x-request-id"] == "req-42" and generated and bad.status_code == 415
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    mine = next(line for line in lines if line["request_id"] == "req-42")
    assert mine["route"] == "infer" and mine["status"] == 200 and mine["versions"] == ["7"]
    assert mine["ms"] > 0 and mine["method"] == "POST" and mine["path"] == INFER
    assert any(line["request_id"] == generated for line in lines)
    assert [line["status"] for line in lines][-1] == 415


def _written(url: str) -> float:
    """The rows the server's prediction log has written so far, from its metrics."""
    found = re.search(r'kmeans_prediction_log_rows_total\{outcome="written"\} (\S+)',
                      httpx.get(f"{url}/metrics").text)
    return float(found.group(1)) if found else 0.0


def test_prediction_log_writes_sampled_predictions_off_the_request_path(model, lookup,
                                                                        tmp_path):
    """What the server answered lands in hour folders of Parquet, vectors and lookups by id
    alike (failed rows left out); a full queue drops and counts, it never fails a request."""
    from pipeline.core.predictions import read_window
    from pipeline.serving.predlog import PredictionLog

    service = SegmentService(NAME, lookup=lookup)
    service.load(model, "7")
    plog = PredictionLog(tmp_path / "predictions", model.feature_names, flush_seconds=0.2)
    ids = [100_002, 100_003]
    before = dt.datetime.now(dt.UTC)
    with running(InferenceApp(service, prediction_log=plog)) as url:
        rows = [[float(i)] * 12 for i in range(1, 4)]
        reply = httpx.post(f"{url}{INFER}", json=_features(rows),
                           headers={"x-request-id": "vectors-1"})
        by_id = httpx.post(f"{url}/v1/models/{NAME}:predict",
                           json={"instances": [{"customer_id": i} for i in [*ids, 5]]},
                           headers={"x-request-id": "ids-1"})
        # one row (the log's one-row path), by vector and by id
        one = httpx.post(f"{url}{INFER}", json=_features([[9.0] * 12]),
                         headers={"x-request-id": "one-1"})
        one_id = httpx.post(f"{url}/v1/models/{NAME}:predict",
                            json={"instances": [{"customer_id": ids[0]}]},
                            headers={"x-request-id": "one-id-1"})
        assert reply.status_code == 200 and by_id.status_code == 200
        assert one.status_code == 200 and one_id.status_code == 200
        wait_until(lambda: _written(url) >= 5 + len(ids), 30,
                   "the prediction log writing the logged rows", progress=lambda: _written(url))
        metrics = httpx.get(f"{url}/metrics").text
    logged = read_window(tmp_path / "predictions", before, dt.datetime.now(dt.UTC))
    assert logged is not None
    frame = logged.to_pandas().sort_values(["request_id", "time"])
    assert frame["request_id"].value_counts().to_dict() == {"vectors-1": 3, "ids-1": len(ids),
                                                            "one-1": 1, "one-id-1": 1}
    single = frame[frame.request_id == "one-1"].iloc[0]
    assert single["total_spend_30d"] == 9.0 and np.isnan(single["customer_id"])
    assert single["cluster"] == _outputs(one)["cluster"][0] and single["model_version"] == "7"
    single_id = frame[frame.request_id == "one-id-1"].iloc[0]
    assert single_id["customer_id"] == ids[0]
    assert single_id["cluster"] == one_id.json()["predictions"][0]["cluster"]
    frame = frame[~frame.request_id.isin(["one-1", "one-id-1"])]
    vectors = frame[frame.request_id == "vectors-1"]
    assert vectors["customer_id"].isna().all() and (vectors["model_version"] == "7").all()
    assert vectors["total_spend_30d"].tolist() == [1.0, 2.0, 3.0]
    assert vectors["cluster"].tolist() == _outputs(reply)["cluster"]
    looked_up = frame[frame.request_id == "ids-1"]
    assert sorted(looked_up["customer_id"].tolist()) == sorted(ids)
    assert looked_up[model.feature_names].notna().any(axis=None)
    assert f'kmeans_prediction_log_rows_total{{outcome="written"}} {5.0 + len(ids)}' in metrics
    assert [p.name.startswith("hour=") for p in (tmp_path / "predictions").iterdir()]
    # full columns drop (and count) what does not fit, and never wait
    small = PredictionLog(tmp_path / "small", model.feature_names, max_queue_rows=4)
    pred = service.predict_vectors(np.ones((3, 12)))
    for _ in range(2):
        small.record("r", np.ones((3, 12)), pred, None)
    assert small.rows.labels("dropped")._value.get() == 3
    assert small.flush() == 3 and small.flush() == 0


def test_not_ready_is_503():
    with running(InferenceApp(SegmentService(NAME))) as url:
        ready = httpx.get(f"{url}/v2/health/ready")
        assert ready.status_code == 503 and ready.json() == {"ready": False}
        reply = httpx.post(f"{url}{INFER}", json=_features([[1.0] * 12]))
        assert reply.status_code == 503 and "not loaded yet" in reply.json()["error"]


def test_concurrency_limit_answers_503_and_spares_probes(model):
    lookup = GatedLookup(model.preprocessor.means)
    service = SegmentService(NAME, lookup=lookup)
    service.load(model, "1")
    by_id = {"inputs": [{"name": "customer_id", "datatype": "INT64", "shape": [1],
                         "data": [7]}]}
    with running(InferenceApp(service, ServingSettings(max_concurrency=1))) as url, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(httpx.post, f"{url}{INFER}", json=by_id, timeout=30)
        assert lookup.entered.wait(10), "the first request never reached the store"
        busy = httpx.post(f"{url}{INFER}", json=_features([[1.0] * 12]))
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "limit of 1 concurrent requests" in busy.json()["error"]
        assert httpx.get(f"{url}/v2/health/live").status_code == 200
        lookup.gate.set()
        assert held.result().status_code == 200
        assert httpx.post(f"{url}{INFER}", json=_features([[1.0] * 12])).status_code == 200
        assert "kmeans_rejected_busy_total 1.0" in httpx.get(f"{url}/metrics").text


def test_batch_of_1000_rows(model):
    service = SegmentService(NAME)
    service.load(model, "1")
    noise = np.random.default_rng(1).normal(size=(1000, 12))
    rows = (np.asarray(model.preprocessor.means) + noise).tolist()
    with running(InferenceApp(service, ServingSettings(max_body_bytes=4 << 20))) as url:
        reply = httpx.post(f"{url}{INFER}", json=_features(rows))
    assert reply.status_code == 200
    assert _outputs(reply)["cluster"] == model.assign(np.asarray(rows)).cluster.tolist()


def test_tritonclient_calls_infer(server, model):
    """A v2 client library written by others (NVIDIA's tritonclient) against this server,
    with JSON tensors and with its binary tensor extension."""
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=server.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(NAME)
        assert client.get_model_metadata(NAME)["versions"] == ["7"]
        x = (np.asarray(model.preprocessor.means) + np.eye(12)[:4]).astype(np.float32)
        expected = model.assign(x.astype(np.float64)).cluster
        for binary in (False, True):
            tensor = triton.InferInput("features", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            result = client.infer(NAME, [tensor], headers={"Authorization": f"Bearer {TOKEN}"},
                                  outputs=[triton.InferRequestedOutput("cluster",
                                                                       binary_data=False),
                                           triton.InferRequestedOutput("distance",
                                                                       binary_data=False)])
            assert result.as_numpy("cluster").tolist() == expected.tolist()
            assert result.as_numpy("distance").shape == (4,)
        with pytest.raises(Exception, match="401|bearer"):
            client.infer(NAME, [tensor])
    finally:
        client.close()
