"""The rollout controller's KServe backend, through the real kubernetes client.

No Kubernetes API server runs on this machine, so this test stands one in at the client's REST
layer: it keeps the InferenceService of k8s/base/predictor/inferenceservice.yaml in memory,
answers GET, and applies PATCH as a JSON merge patch (RFC 7386), as the API server does for
custom resources.
Everything above that layer (CustomObjectsApi, serialization, content types, URLs) is the real
client, and the test checks the exact requests the backend sends.
"""

import copy
import json
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from pipeline.rollout.backends.kubernetes import MODEL_ANNOTATION, STABLE_ANNOTATION, KServeBackend
from pipeline.rollout.base import RolloutError, Step

MANIFEST = (Path(__file__).resolve().parents[3] / "k8s" / "base" / "predictor" /
            "inferenceservice.yaml")
PATH = "/apis/serving.kserve.io/v1beta1/namespaces/kmeans/inferenceservices/customer-segments"


def _merge(target, patch):
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


class _Response:
    def __init__(self, status, payload):
        self.status, self.reason = status, "OK" if status == 200 else "Not Found"
        self.data = json.dumps(payload).encode()
        self.headers = {"content-type": "application/json"}


class FakeApiServer:
    """Stands in for the API server at the REST layer (see the module docstring); ``twin``:
    the gRPC twin InferenceService, when deployed."""

    def __init__(self, obj, twin=None):
        self.obj = obj
        self.twin = twin
        self.requests = []

    def request(self, method, url, headers=None, body=None, post_params=None,
                _request_timeout=None):
        path = url.split("://", 1)[-1].split("/", 1)[-1]
        self.requests.append({"method": method, "path": "/" + path,
                              "content_type": (headers or {}).get("Content-Type"),
                              "body": body})
        if "/" + path == PATH + "-grpc" and self.twin is not None:
            if method == "PATCH":
                self.twin = _merge(self.twin, body if isinstance(body, dict)
                                   else json.loads(body))
            return client.rest.RESTResponse(_Response(200, self.twin))
        if "/" + path != PATH:
            return client.rest.RESTResponse(_Response(404, {"kind": "Status", "code": 404}))
        if method == "PATCH":
            self.obj = _merge(self.obj, body if isinstance(body, dict) else json.loads(body))
        return client.rest.RESTResponse(_Response(200, self.obj))


@pytest.fixture
def kserve():
    obj = yaml.safe_load(MANIFEST.read_text())
    api_client = client.ApiClient(client.Configuration(host="https://kube.invalid"))
    server = FakeApiServer(obj)
    api_client.rest_client = server
    return KServeBackend(client.CustomObjectsApi(api_client), "customer-segments", "kmeans",
                         admin_token="t"), server


def test_canary_lifecycle_patches_the_inference_service(kserve):
    backend, server = kserve
    backend.load("4", slot="stable")
    assert backend.routing() == {"stable": "4", "canary": None, "weight": 0.0, "mode": "canary"}
    backend.load("5")
    predictor = server.obj["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 0
    assert predictor["annotations"][MODEL_ANNOTATION] == "5"
    assert predictor["containers"][0]["args"][-2:] == ["--version", "5"]
    assert predictor["containers"][0]["args"].count("--version") == 1
    # the image is kept (the base names it without a tag; the overlays pin the tag)
    assert predictor["containers"][0]["image"] == "kmeans-platform/serving"
    backend.traffic(Step("canary", 10))
    assert backend.routing() == {"stable": "4", "canary": "5", "weight": 10.0, "mode": "canary"}
    backend.promote("5")
    assert "canaryTrafficPercent" not in server.obj["spec"]["predictor"]
    assert server.obj["metadata"]["annotations"][STABLE_ANNOTATION] == "5"
    assert backend.routing() == {"stable": "5", "canary": None, "weight": 0.0, "mode": "canary"}
    patches = [r for r in server.requests if r["method"] == "PATCH"]
    assert {r["content_type"] for r in patches} == {"application/merge-patch+json"}
    assert {r["path"] for r in server.requests if r["method"] == "PATCH"} == {PATH}
    # it looked for the gRPC twin (not deployed here: 404) and went on without it
    assert {r["path"] for r in server.requests} == {PATH, PATH + "-grpc"}
    assert patches[2]["body"] == {"spec": {"predictor": {"canaryTrafficPercent": 10}}}
    assert patches[3]["body"] == {"metadata": {"annotations": {STABLE_ANNOTATION: "5"}},
                                  "spec": {"predictor": {"canaryTrafficPercent": None}}}


def test_drop_returns_the_template_to_the_stable_version(kserve):
    backend, server = kserve
    backend.load("4", slot="stable")
    backend.load("6")
    backend.traffic(Step("canary", 50))
    backend.drop("6")
    predictor = server.obj["spec"]["predictor"]
    assert predictor["annotations"][MODEL_ANNOTATION] == "4"
    assert predictor["containers"][0]["args"][-2:] == ["--version", "4"]
    assert "canaryTrafficPercent" not in predictor
    assert backend.routing() == {"stable": "4", "canary": None, "weight": 0.0, "mode": "canary"}


def test_shadow_is_refused_with_the_reason(kserve):
    backend, _ = kserve
    with pytest.raises(RolloutError, match="cannot mirror traffic"):
        backend.traffic(Step("shadow", 0))



def test_the_manifest_enables_the_tag_hosts_the_backend_reads():
    """The backend analyses each revision through KServe's `prev-` and `latest-` hosts, which
    exist only with tag routing on (they were off: the analysis could not have read them)."""
    annotations = yaml.safe_load(MANIFEST.read_text())["metadata"]["annotations"]
    assert annotations["serving.kserve.io/enable-tag-routing"] == "true"


def test_every_write_goes_to_the_grpc_twin_too_from_its_own_predictor():
    """With the twin deployed (k8s/base/grpc), each write is applied to it as well, computed
    from its own predictor: its --grpc-port argument and h2c port are kept."""
    obj = yaml.safe_load(MANIFEST.read_text())
    twin = copy.deepcopy(obj)
    twin["metadata"]["name"] = "customer-segments-grpc"
    twin["spec"]["predictor"]["containers"][0]["args"] += ["--grpc-port", "8081"]
    api_client = client.ApiClient(client.Configuration(host="https://kube.invalid"))
    server = FakeApiServer(obj, twin)
    api_client.rest_client = server
    backend = KServeBackend(client.CustomObjectsApi(api_client), "customer-segments", "kmeans",
                            admin_token="t")
    backend.load("4", slot="stable")
    backend.load("5")
    backend.traffic(Step("canary", 50))
    for isvc in (server.obj, server.twin):
        predictor = isvc["spec"]["predictor"]
        assert predictor["canaryTrafficPercent"] == 50
        assert predictor["annotations"][MODEL_ANNOTATION] == "5"
        assert predictor["containers"][0]["args"][-2:] == ["--version", "5"]
    assert server.twin["spec"]["predictor"]["containers"][0]["args"][:6] == [
        "--host", "0.0.0.0", "--port", "8080", "--grpc-port", "8081"]
    backend.drop("5")
    for isvc in (server.obj, server.twin):
        assert isvc["spec"]["predictor"]["containers"][0]["args"][-2:] == ["--version", "4"]
        assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    backend.load("6")
    backend.promote("6")
    assert server.twin["metadata"]["annotations"][STABLE_ANNOTATION] == "6"
    assert backend.routing() == {"stable": "6", "canary": None, "weight": 0.0, "mode": "canary"}
