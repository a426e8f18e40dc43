"""The Open Inference Protocol over gRPC, on its own port beside REST, as stock clients meet it:
tritonclient's gRPC client (the pinned one, in the project's venv), and the kserve SDK's
``InferenceGRPCClient`` with the newest tritonclient in a fresh venv of their own
(``tests/helpers/grpc_clients.py``). The same tokens, limits, canary routing, metrics, access
log and prediction log as REST, a real Feast online store for lookups by id, and the hostile
cases that apply to gRPC: bytes that are no message, bad shapes, oversized messages, missing
tokens, a stalled stream."""

from __future__ import annotations

import io
import json
import subprocess
import threading
import time

import grpc
import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from pipeline.core.settings import FEATURE_NAMES, ServingSettings
from pipeline.data.features import feature_store
from pipeline.serving import v2proto
from pipeline.serving.app import InferenceApp
from pipeline.serving.lookup import OnlineLookup
from pipeline.serving.model import SegmentService
from pipeline.serving.predlog import PredictionLog
from pipeline.serving.server import running
from tests.helpers.homes import make_settings
from tests.helpers.processes import REPO, tool_venv
from tests.helpers.serving import ADMIN, INFER, NAME, TOKEN, GatedLookup, make_model
from tests.helpers.waiting import wait_until

SERVICE = "customer_segments_v1"
AUTH = {"authorization": f"Bearer {TOKEN}"}
WIDTH = len(FEATURE_NAMES)
INFER_PATH = f"/{v2proto.SERVICE}/ModelInfer"
#: The stock clients' own venv: the kserve SDK (its pins clash with the lock: protobuf < 7) and
#: the newest tritonclient, as a user would install them.
CLIENT_VENV = REPO / ".cache" / "grpc-clients-venv"
CLIENT_REQUIREMENTS = ("kserve==0.21.0", "tritonclient[grpc]")


@pytest.fixture(scope="module")
def model(snapshot_path, tmp_path_factory):
    return make_model(snapshot_path, tmp_path_factory.mktemp("model") / "m")


@pytest.fixture(scope="module")
def canary(snapshot_path, tmp_path_factory):
    return make_model(snapshot_path, tmp_path_factory.mktemp("canary") / "m", seed=3)


@pytest.fixture(scope="module")
def world(model, canary, lake_home, tmp_path_factory):
    """The app on loopback: REST and gRPC, a real Feast online store, a canary answering half
    the keys, the access log and the prediction log."""
    lookup = OnlineLookup(feature_store(make_settings(lake_home)), SERVICE, model.feature_names)
    service = SegmentService(NAME, lookup=lookup, max_batch_rows=100)
    service.load(model, "7")
    service.load(canary, "8", "canary")
    service.set_traffic(50, "canary")
    access = io.BytesIO()
    plog = PredictionLog(tmp_path_factory.mktemp("predictions"), list(model.feature_names),
                         flush_seconds=3600)
    app = InferenceApp(service, ServingSettings(serving_token=TOKEN, admin_token=ADMIN,
                                                max_body_bytes=64 * 1024, grpc_port=0),
                       access_log=access, prediction_log=plog)
    with running(app) as url:
        yield {"url": url, "app": app, "address": f"127.0.0.1:{app.grpc.port}",
               "access": access, "plog": plog}


@pytest.fixture
def client(world):
    c = triton.InferenceServerClient(world["address"])
    yield c
    c.close()


#: The model the rows are drawn for (set by the ``world`` fixture): rows near its training
#: data, inside every feature's accepted range.
_FOR: list = []


@pytest.fixture(autouse=True)
def _rows_for(model):
    _FOR[:] = [model]


def _rows(n: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.asarray(_FOR[0].preprocessor.inverse_transform(rng.normal(0, 0.7, (n, WIDTH))),
                   dtype=np.float64)
    return x


def _infer(client, x: np.ndarray, datatype: str = "FP32", **kwargs):
    tensor = triton.InferInput("features", list(x.shape), datatype)
    tensor.set_data_from_numpy(x.astype(np.float32 if datatype == "FP32" else np.float64))
    return client.infer(NAME, [tensor], headers=kwargs.pop("headers", AUTH), **kwargs)


def _fails(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status(), caught.value.message()


def _raw_call(address: str, body: bytes, metadata=(("authorization", f"Bearer {TOKEN}"),)):
    """ModelInfer with bytes of our choosing (a hand-made or broken message)."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(INFER_PATH)
        try:
            return call(body, metadata=metadata, timeout=10), None
        except grpc.RpcError as error:
            return None, error


def test_the_messages_are_the_protocols_field_for_field():
    """v2proto declares the messages from a table; tritonclient's generated code is the
    reference: same names, numbers, types, labels and message types, nested ones too."""
    def fields(descriptor):
        return {f.name: (f.number, f.type, f.is_repeated,
                         f.message_type.full_name if f.message_type else None)
                for f in descriptor.fields}

    def compare(ours, theirs):
        assert fields(ours) == fields(theirs), ours.full_name
        for nested in ours.nested_types:
            compare(nested, theirs.nested_types_by_name[nested.name])

    for name, message in v2proto.FILE.message_types_by_name.items():
        compare(message, service_pb2.DESCRIPTOR.message_types_by_name[name])
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in v2proto.FILE.services_by_name["GRPCInferenceService"].methods:
        assert theirs.methods_by_name[method.name].input_type.full_name == \
            method.input_type.full_name


def test_the_standard_health_check_for_kubernetes_probes(world):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(world["address"]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", v2proto.SERVICE):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as caught:
            stub.Check(health_pb2.HealthCheckRequest(service="other"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_and_metadata(client, world):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(NAME)
    assert client.get_server_metadata(as_json=True)["name"] == "kmeans-platform"
    meta = client.get_model_metadata(NAME, as_json=True)
    rest = httpx.get(f"{world['url']}/v2/models/{NAME}").json()
    assert meta["name"] == rest["name"] and meta["versions"] == rest["versions"] == ["7", "8"]
    assert [(t["name"], t["datatype"], [int(s) for s in t["shape"]]) for t in meta["inputs"]] \
        == [(t["name"], t["datatype"], t["shape"]) for t in rest["inputs"]]
    assert [o["name"] for o in meta["outputs"]] == [o["name"] for o in rest["outputs"]]
    assert _fails(lambda: client.is_model_ready("nope"))[0] == "StatusCode.NOT_FOUND"
    status, message = _fails(lambda: client.get_model_metadata(NAME, model_version="9"))
    assert status == "StatusCode.NOT_FOUND" and "version '9'" in message


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_infer_answers_as_rest_does_row_for_row_canary_included(client, world, datatype):
    x = _rows()
    result = _infer(client, x, datatype, request_id="grpc-req-1")
    sent = x.astype(np.float32).astype(np.float64) if datatype == "FP32" else x
    rest = httpx.post(world["url"] + INFER, headers=AUTH, json={"inputs": [
        {"name": "features", "datatype": "FP64", "shape": list(sent.shape),
         "data": sent.tolist()}]}).json()
    outputs = {o["name"]: o["data"] for o in rest["outputs"]}
    assert result.as_numpy("cluster").tolist() == outputs["cluster"]
    np.testing.assert_allclose(result.as_numpy("distance"), outputs["distance"], rtol=1e-12)
    assert result.as_numpy("ood").tolist() == outputs["ood"]
    versions = [v.decode() for v in result.as_numpy("model_version")]
    assert versions == outputs["model_version"]
    assert set(versions) == {"7", "8"}, "the canary answers its half of the keys"
    reply = result.get_response()
    assert reply.id == "grpc-req-1" and reply.model_version == rest["model_version"]


def test_a_version_can_be_asked_for(client):
    result = _infer(client, _rows(8), model_version="8")
    assert {v.decode() for v in result.as_numpy("model_version")} == {"8"}


def test_lookups_by_customer_id_through_feast(client, world):
    ids = np.array([100_002, 42, 100_003], dtype=np.int64)
    tensor = triton.InferInput("customer_id", [3], "INT64")
    tensor.set_data_from_numpy(ids)
    result = client.infer(NAME, [tensor], headers=AUTH)
    rest = httpx.post(world["url"] + INFER, headers=AUTH, json={"inputs": [
        {"name": "customer_id", "datatype": "INT64", "shape": [3],
         "data": ids.tolist()}]}).json()
    outputs = {o["name"]: o["data"] for o in rest["outputs"]}
    assert [e.decode() for e in result.as_numpy("error")] == outputs["error"] == \
        ["", "customer_id 42 has no online features", ""]
    assert result.as_numpy("cluster")[[0, 2]].tolist() == [outputs["cluster"][i]
                                                          for i in (0, 2)]
    assert result.as_numpy("stale").tolist() == outputs["stale"]


def test_requested_outputs_only(client):
    result = _infer(client, _rows(3), outputs=[triton.InferRequestedOutput("cluster")])
    assert [o.name for o in result.get_response().outputs] == ["cluster"]
    status, message = _fails(lambda: _infer(client, _rows(3), outputs=[
        triton.InferRequestedOutput("centroid")]))
    assert status == "StatusCode.INVALID_ARGUMENT" and "'centroid'" in message


def test_tokens_as_rest_takes_them(client):
    assert _fails(lambda: _infer(client, _rows(2), headers={})) == (
        "StatusCode.UNAUTHENTICATED",
        "missing bearer token: send 'Authorization: Bearer <token>'")
    for token in ("wrong-token", ADMIN):  # the admin token is not a prediction token
        assert _fails(lambda t=token: _infer(client, _rows(2), headers={
            "authorization": f"Bearer {t}"})) == (
            "StatusCode.PERMISSION_DENIED", "the bearer token is not valid for predictions")
    # health and metadata need no token, as over REST
    assert client.is_server_ready(headers={})


@pytest.mark.parametrize("build, message", [
    (lambda m: m.inputs.add(name="features", datatype="FP32", shape=[1, WIDTH + 1]),
     f"features have shape [1, {WIDTH + 1}]; this model takes [n, {WIDTH}]"),
    (lambda m: m.inputs.add(name="features", datatype="INT8", shape=[1, WIDTH]),
     "features has datatype 'INT8'; allowed: FP32, FP64"),
    (lambda m: m.inputs.add(name="vectors", datatype="FP32", shape=[1, WIDTH]),
     "input name 'vectors' is not known"),
    (lambda m: [m.inputs.add(name="features", datatype="FP32", shape=[1, WIDTH])
                for _ in range(2)], "the request has 2 inputs; send one tensor"),
    (lambda m: m.inputs.add(name="features", datatype="FP32", shape=[101, WIDTH]),
     "101 rows"),
    (lambda m: m.inputs.add(name="features", datatype="FP32", shape=[1, WIDTH])
     .contents.fp32_contents.extend([1.0] * (WIDTH - 1)),
     f"features has {WIDTH - 1} values in contents.fp32_contents; shape [1, {WIDTH}] needs "
     f"{WIDTH}"),
    (lambda m: (m.inputs.add(name="features", datatype="FP32", shape=[1, WIDTH]),
                m.raw_input_contents.append(b"\0" * (4 * WIDTH - 1))),
     f"raw_input_contents[0] size {4 * WIDTH - 1} does not match shape [1, {WIDTH}] of FP32"),
    (lambda m: (m.inputs.add(name="features", datatype="FP32", shape=[1, WIDTH])
                .contents.fp32_contents.extend([1.0] * WIDTH),
                m.raw_input_contents.append(b"\0" * 4 * WIDTH)),
     "send the one input in exactly one of them"),
    (lambda m: (m.inputs.add(name="features", datatype="FP64", shape=[1, WIDTH]),
                m.raw_input_contents.append(np.full(WIDTH, np.inf).tobytes())),
     f"row 0: feature {FEATURE_NAMES[0]}: inf is not a finite number"),
    (lambda m: m.inputs.add(name="customer_id", datatype="INT64", shape=[2, 2])
     .contents.int64_contents.extend([1, 2, 3, 4]),
     "customer_id has shape [2, 2]; allowed: [n] or [n, 1]"),
])
def test_bad_input_is_invalid_argument_naming_what_was_wrong(world, build, message):
    msg = v2proto.ModelInferRequest(model_name=NAME)
    build(msg)
    reply, error = _raw_call(world["address"], msg.SerializeToString())
    assert error is not None, reply
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert message in error.details(), error.details()


def test_bytes_that_are_no_message_and_oversized_messages(world, client):
    _, error = _raw_call(world["address"], b"\xff\xff\xff\xff garbage")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ModelInferRequest" in error.details()
    # over max_body_bytes (64 KiB): refused by gRPC before any parsing
    _, error = _raw_call(world["address"], b"\0" * (80 * 1024))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    assert _infer(client, _rows(2)).as_numpy("cluster").shape == (2,)  # still serving


def test_metrics_access_log_and_prediction_log_count_grpc_calls(client, world):
    plog = world["plog"]
    plog.flush()
    written = sum(pq.read_table(p).num_rows for p in plog.directory.rglob("*.parquet"))
    _infer(client, _rows(5, seed=9), headers={**AUTH, "x-request-id": "grpc-logged-1"})
    _fails(lambda: _infer(client, _rows(2), headers={}))
    metrics = httpx.get(world["url"] + "/metrics").text
    assert 'kmeans_requests_total{route="grpc_infer",status="200"}' in metrics
    assert 'kmeans_requests_total{route="grpc_infer",status="401"}' in metrics
    lines = [json.loads(line) for line in world["access"].getvalue().splitlines()]
    mine = [line for line in lines if line["request_id"] == "grpc-logged-1"]
    assert mine and mine[0]["method"] == "GRPC" and mine[0]["path"] == INFER_PATH
    assert mine[0]["status"] == 200 and set(mine[0]["versions"]) <= {"7", "8"}
    assert plog.flush() >= 5
    rows = sum(pq.read_table(p).num_rows for p in plog.directory.rglob("*.parquet"))
    assert rows - written >= 5
    frames = [pq.read_table(p).to_pandas() for p in plog.directory.rglob("*.parquet")]
    assert any((f["request_id"] == "grpc-logged-1").sum() == 5 for f in frames)


def test_grpc_and_rest_share_one_concurrency_budget(model, tmp_path):
    """A lookup held open over gRPC takes the one slot: a second call over either protocol is
    refused (UNAVAILABLE / 503) until it ends."""
    gated = GatedLookup(np.ones(WIDTH))
    service = SegmentService(NAME, lookup=gated)
    service.load(model, "1")
    app = InferenceApp(service, ServingSettings(serving_token=TOKEN, max_concurrency=1,
                                                grpc_port=0))
    with running(app) as url:
        address = f"127.0.0.1:{app.grpc.port}"
        held = {}

        def hold():
            c = triton.InferenceServerClient(address)
            tensor = triton.InferInput("customer_id", [1], "INT64")
            tensor.set_data_from_numpy(np.array([1], dtype=np.int64))
            held["result"] = c.infer(NAME, [tensor], headers=AUTH)
            c.close()

        thread = threading.Thread(target=hold)
        thread.start()
        try:
            assert gated.entered.wait(20), "the held call never reached the store"
            c = triton.InferenceServerClient(address)
            status, message = _fails(lambda: _infer(c, _rows(1)))
            c.close()
            assert status == "StatusCode.UNAVAILABLE" and "at its limit of 1" in message
            rest = httpx.post(url + INFER, headers=AUTH, json={"inputs": [{
                "name": "features", "datatype": "FP64", "shape": [1, WIDTH],
                "data": _rows(1).tolist()}]})
            assert rest.status_code == 503, rest.text
        finally:
            gated.gate.set()
            thread.join(30)
        assert held["result"].as_numpy("cluster").shape == (1,)
        assert app.inflight == 0


def test_a_stalled_stream_is_cut_while_other_calls_are_served(model, tmp_path):
    """A client that opens a ModelInfer stream and never finishes its message holds no slot
    and is cut when its connection reaches grpc_max_connection_age_seconds plus the
    body_timeout_seconds grace."""
    service = SegmentService(NAME)
    service.load(model, "1")
    app = InferenceApp(service, ServingSettings(serving_token=TOKEN, grpc_port=0,
                                                grpc_max_connection_age_seconds=1,
                                                body_timeout_seconds=1))
    with running(app) as url:
        address = f"127.0.0.1:{app.grpc.port}"
        never = threading.Event()

        def stalled_body():
            never.wait(120)  # sends the headers, then nothing: the message never comes
            yield b""

        outcome: dict = {}

        def stall():
            with grpc.insecure_channel(address) as channel:
                call = channel.stream_unary(INFER_PATH)
                started = time.monotonic()
                try:
                    call(stalled_body(), metadata=tuple(AUTH.items()), timeout=60)
                    outcome["code"] = "OK"
                except grpc.RpcError as error:
                    outcome["code"] = error.code()
                outcome["seconds"] = time.monotonic() - started

        thread = threading.Thread(target=stall)
        thread.start()
        try:
            c = triton.InferenceServerClient(address)
            for _ in range(3):  # the others are served meanwhile
                assert _infer(c, _rows(2)).as_numpy("cluster").shape == (2,)
                assert app.inflight == 0  # the stalled stream holds no slot
            c.close()
            wait_until(lambda: "code" in outcome, 30, "the stalled stream cut by the server")
        finally:
            never.set()
            thread.join(30)
        assert outcome["code"] != "OK" and outcome["code"] != grpc.StatusCode.DEADLINE_EXCEEDED, \
            outcome
        assert httpx.get(url + "/v2/health/ready").json() == {"ready": True}


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_port_in_use_is_refused_at_start(model, tmp_path):
    service = SegmentService(NAME)
    service.load(model, "1")
    first = InferenceApp(service, ServingSettings(grpc_port=0))
    with running(first):
        second = InferenceApp(service, ServingSettings(grpc_port=first.grpc.port))
        with pytest.raises(RuntimeError, match="did not start"), running(second):
            pass


@pytest.fixture(scope="module")
def client_python():
    return tool_venv(CLIENT_VENV, *CLIENT_REQUIREMENTS)


@pytest.mark.parametrize("which", ["kserve", "tritonclient"])
def test_stock_clients_in_a_fresh_venv(world, model, client_python, which):
    x = _rows(6, seed=4)
    spec = {"address": world["address"], "token": TOKEN, "model": NAME, "rows": x.tolist(),
            "ids": [100_002, 100_003]}
    done = subprocess.run([str(client_python), str(REPO / "tests" / "helpers" /
                                                   "grpc_clients.py"), which,
                           json.dumps(spec)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["live"] and out["ready"] and out["model_ready"]
    expected = httpx.post(world["url"] + INFER, headers=AUTH, json={"inputs": [{
        "name": "features", "datatype": "FP32", "shape": list(x.shape),
        "data": x.astype(np.float32).tolist()}]}).json()
    rest = {o["name"]: o["data"] for o in expected["outputs"]}
    if which == "kserve":
        for layout in ("raw", "contents"):  # raw_input_contents, then contents
            got = out["infer"][layout]
            assert got["id"] == "kserve-1"
            assert got["cluster"] == rest["cluster"] and \
                got["model_version"] == rest["model_version"]
            np.testing.assert_allclose(got["distance"], rest["distance"], rtol=1e-12)
        by_id = httpx.post(world["url"] + INFER, headers=AUTH, json={"inputs": [{
            "name": "customer_id", "datatype": "INT64", "shape": [2],
            "data": spec["ids"]}]}).json()
        assert out["infer"]["ids"]["cluster"] == by_id["outputs"][0]["data"]
        assert out["failures"]["no_token"]["code"] == "UNAUTHENTICATED"
        assert out["failures"]["wrong_token"]["code"] == "PERMISSION_DENIED"
    else:
        assert out["infer"]["names"] == ["cluster", "distance"]
        assert out["infer"]["id"] == "triton-1" and out["infer"]["cluster"] == rest["cluster"]
        assert out["failures"]["bad_shape"]["code"] == "StatusCode.INVALID_ARGUMENT"
        assert out["failures"]["unknown_model"]["code"] == "StatusCode.NOT_FOUND"
