"""Missing values as stock v2 clients send them: tritonclient in JSON mode (and ``mlserver
infer``, and anything built on Python's ``json``) writes a missing float as the bare token
``NaN``, which is not JSON. The server takes it as a missing value, like null; ``Infinity`` is
refused with a 400 naming the row and the feature; everything else that is not JSON stays a 400,
never a 500. The bodies are the exact bytes tritonclient builds, sent over loopback."""

import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from pipeline.core.settings import FEATURE_NAMES
from tests.helpers.serving import ADMIN_AUTH, AUTH, INFER, PREDICT

WIDTH = len(FEATURE_NAMES)


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server, headers=AUTH, timeout=10) as client:
        yield client


def _rows(model) -> np.ndarray:
    """Four customers near the training means, with missing values in three of them."""
    x = np.asarray(model.preprocessor.inverse_transform(
        np.eye(WIDTH)[:4] * 0.5), dtype=np.float64)
    x[0, 2] = x[1, 5] = x[1, 7] = np.nan
    x[3, :WIDTH - 1] = np.nan  # one known value left
    return x


def _triton_body(x: np.ndarray, datatype: str = "FP64") -> bytes:
    """The request body tritonclient sends for ``x`` as a JSON tensor."""
    tensor = triton.InferInput("features", list(x.shape), datatype)
    tensor.set_data_from_numpy(x.astype(np.float32 if datatype == "FP32" else np.float64),
                               binary_data=False)
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [tensor], outputs=[triton.InferRequestedOutput("cluster", binary_data=False),
                           triton.InferRequestedOutput("distance", binary_data=False)])
    assert json_size is None  # all JSON, no binary part
    return body


@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
def test_the_bytes_tritonclient_sends_for_a_missing_value_are_scored(http, model, datatype):
    x = _rows(model)
    body = _triton_body(x, datatype)
    assert b"NaN" in body and b"null" not in body, body[:200]  # what the stock client writes
    reply = http.post(INFER, content=body)  # tritonclient sends no content-type
    assert reply.status_code == 200, reply.text
    outputs = {o["name"]: o["data"] for o in reply.json()["outputs"]}
    expected = model.assign(x.astype(np.float32).astype(np.float64) if datatype == "FP32"
                            else x)
    assert outputs["cluster"] == expected.cluster.tolist()
    np.testing.assert_allclose(outputs["distance"], expected.distance, rtol=1e-6)
    # NaN is a missing value exactly as null is
    with_null = http.post(INFER, json={"inputs": [{
        "name": "features", "datatype": datatype, "shape": list(x.shape),
        "data": [[None if v != v else float(v) for v in row] for row in
                 (x.astype(np.float32) if datatype == "FP32" else x).tolist()]}],
        "outputs": [{"name": "cluster"}, {"name": "distance"}]})
    assert with_null.json()["outputs"] == reply.json()["outputs"]


def test_tritonclient_infer_in_json_mode_with_missing_values(server, model):
    """The stock client end to end, not only its bytes."""
    x = _rows(model)
    client = triton.InferenceServerClient(url=server.removeprefix("http://"))
    try:
        tensor = triton.InferInput("features", list(x.shape), "FP64")
        tensor.set_data_from_numpy(x, binary_data=False)
        result = client.infer("customer_segments", [tensor], headers=AUTH, outputs=[
            triton.InferRequestedOutput("cluster", binary_data=False)])
        assert result.as_numpy("cluster").tolist() == model.assign(x).cluster.tolist()
    finally:
        client.close()


@pytest.mark.parametrize("value, shown", [(np.inf, "inf"), (-np.inf, "-inf")])
def test_infinity_from_a_stock_client_is_a_400_naming_the_row_and_the_feature(
        http, model, value, shown):
    x = _rows(model)
    x[2, 1] = value
    body = _triton_body(x)
    assert (b"-Infinity" if value < 0 else b"Infinity") in body
    reply = http.post(INFER, content=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error.startswith(f"row 2: feature {FEATURE_NAMES[1]}: {shown} is not a finite "
                            "number (accepted range ["), error


def test_a_number_beyond_float64_is_refused_like_infinity(http, model):
    body = _triton_body(_rows(model)).replace(b"NaN", b"1e999", 1)
    reply = http.post(INFER, content=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"].startswith(f"row 0: feature {FEATURE_NAMES[2]}: inf is not a "
                                            "finite number"), reply.text


def test_v1_instances_from_pythons_json_with_nan(http, model):
    x = _rows(model)
    named = [dict(zip(FEATURE_NAMES, row, strict=True)) for row in x.tolist()]
    for instances in (x.tolist(), named):
        body = json.dumps({"instances": instances}).encode()  # Python writes NaN bare
        assert b"NaN" in body
        reply = http.post(PREDICT, content=body, headers={"content-type": "application/json"})
        assert reply.status_code == 200, reply.text
        assert [p["cluster"] for p in reply.json()["predictions"]] == \
            model.assign(x).cluster.tolist()


def test_a_row_of_nan_only_is_refused_as_a_row_of_nulls_is(http, model):
    x = _rows(model)
    x[1] = np.nan
    reply = http.post(INFER, content=_triton_body(x))
    assert reply.status_code == 400
    assert reply.json()["error"].startswith("row 1: no feature value (all null)")


@pytest.mark.parametrize("body, message", [
    # NaN where no number belongs: the checks that follow parsing refuse it
    (b'{"inputs": [{"name": "features", "datatype": "FP64", "shape": [NaN, 12], '
     b'"data": [1]}]}', "must be a list of non-negative integers"),
    (b'{"inputs": [{"name": "customer_id", "datatype": "INT64", "shape": [1], '
     b'"data": [NaN]}]}', "customer_id must be an integer, got nan"),
    # not JSON with NaN either: still a 400 naming the parse error
    (b'{"inputs": [NaN,]}', "body is not valid JSON"),
    (b'{"inputs": [-NaN]}', "body is not valid JSON"),
    (b'{"id": "\\ud800", "inputs": [NaN]}', "body is not valid JSON"),  # lone surrogate
    (b'[' * 5000 + b'NaN' + b']' * 5000, "body is not valid JSON"),  # deeper than Python goes
    (b'{"inputs": [NaN], "x": "\xff"}', "body is not valid JSON"),  # not UTF-8
])
def test_what_stays_refused_with_nan_in_the_body(http, body, message):
    reply = http.post(INFER, content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert message in reply.json()["error"], reply.text


def test_admin_bodies_stay_strict_json(server):
    reply = httpx.post(f"{server}/admin/traffic", content=b'{"weight": NaN}',
                       headers={**ADMIN_AUTH, "content-type": "application/json"}, timeout=10)
    assert reply.status_code == 400
    assert reply.json()["error"].startswith("body is not valid JSON"), reply.text
