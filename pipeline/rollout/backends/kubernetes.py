"""The rollout controller's Kubernetes backend: a KServe InferenceService (serverless mode).

KServe splits traffic between revisions: changing the predictor's pod template cuts a new
revision, and ``spec.predictor.canaryTrafficPercent`` sends that share of requests to it while
the previous ready revision keeps the rest. This backend therefore:

- loads a canary by setting the template's ``--version`` argument and the
  ``kmeans.io/model-version`` annotation, with ``canaryTrafficPercent: 0``;
- moves traffic by patching ``canaryTrafficPercent``;
- promotes by removing ``canaryTrafficPercent`` (the latest revision takes all traffic) and
  recording the new stable version in ``metadata.annotations['kmeans.io/stable-version']``;
- drops a canary by setting the template back to the stable version and removing the field.

The gRPC twin (``<name>-grpc``, k8s/base/inferenceservice-grpc.yaml: Knative lets a container
expose one port, so the Open Inference Protocol's gRPC half is an InferenceService of its own)
gets every write too, computed from its own predictor, so both serve the same versions with the
same split; the backend finds it by name, and goes on without it where it is not deployed.

Analysis reads each revision's ``/admin/window`` through KServe's tag routes (``prev-`` and
``latest-`` hosts, enabled by ``serving.kserve.io/enable-tag-routing``). Rows are split between
revisions, so agreement on the same rows is not available here; the controller then judges error
rate, p99 latency and the shift of the distance distribution between the two revisions.
KServe has no traffic mirroring, so a ``shadow`` step is refused with that reason.
"""

from __future__ import annotations

import copy

from pipeline.core.settings import Settings
from pipeline.rollout.backends.local import LocalBackend
from pipeline.rollout.base import RolloutError, Step

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
STABLE_ANNOTATION = "kmeans.io/stable-version"
MODEL_ANNOTATION = "kmeans.io/model-version"
GRPC_SUFFIX = "-grpc"  # the gRPC twin's name: the InferenceService's, with this suffix


class KServeBackend:
    def __init__(self, api, name: str, namespace: str, *, window_urls: dict | None = None,
                 admin_token: str | None = None):
        """``api`` is a ``kubernetes.client.CustomObjectsApi``; ``window_urls`` maps
        ``"prev"``/``"latest"`` to the revisions' tag URLs (default: KServe's tag hosts)."""
        self.api = api
        self.name = name
        self.namespace = namespace
        domain = f"{name}-predictor.{namespace}.svc.cluster.local"
        self.window_urls = window_urls or {"prev": f"http://prev-{domain}",
                                           "latest": f"http://latest-{domain}"}
        self.admin_token = admin_token

    @classmethod
    def from_settings(cls, settings: Settings) -> KServeBackend:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        admin_token = settings.serving.admin_token
        token = admin_token.get_secret_value() if admin_token else None
        return cls(client.CustomObjectsApi(), settings.rollout.kserve_name,
                   settings.rollout.kserve_namespace, admin_token=token)

    # ---- reading -------------------------------------------------------------------------
    def _get(self, name: str | None = None) -> dict:
        return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL,
                                                     name or self.name)

    def twins(self) -> list[str]:
        """The InferenceServices that follow this one: its gRPC twin, when it is deployed."""
        from kubernetes.client.exceptions import ApiException

        try:
            self._get(self.name + GRPC_SUFFIX)
        except ApiException as err:
            if err.status == 404:
                return []
            raise
        return [self.name + GRPC_SUFFIX]

    def routing(self) -> dict:
        isvc = self._get()
        predictor = isvc["spec"]["predictor"]
        template = _template_version(predictor)
        stable = (isvc["metadata"].get("annotations") or {}).get(STABLE_ANNOTATION, template)
        canary = template if template != stable else None
        weight = predictor.get("canaryTrafficPercent")
        return {"stable": stable, "canary": canary,
                "weight": float(weight) if canary and weight is not None else 0.0,
                "mode": "canary"}

    # ---- writing -------------------------------------------------------------------------
    def _patch(self, body) -> dict:
        """Patch this InferenceService and its twins: ``body`` is the merge patch, or a
        function of an InferenceService that returns its patch. Returns this one's."""
        out: dict = {}
        for name in [self.name, *self.twins()]:
            patch = body(self._get(name)) if callable(body) else body
            done = self.api.patch_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                           PLURAL, name, patch)
            out = out or done
        return out

    def load(self, version: str, slot: str = "canary") -> dict:
        def patch(isvc: dict) -> dict:
            predictor = _with_version(isvc["spec"]["predictor"], str(version))
            if slot == "stable":
                return {"metadata": {"annotations": {STABLE_ANNOTATION: str(version)}},
                        "spec": {"predictor": {**predictor, "canaryTrafficPercent": None}}}
            return {"spec": {"predictor": {**predictor, "canaryTrafficPercent": 0}}}
        return self._patch(patch)

    def traffic(self, step: Step) -> dict:
        if step.mode == "shadow":
            raise RolloutError("KServe revisions cannot mirror traffic, so a 'shadow' step is "
                               "not possible on the kubernetes backend; start the steps at a "
                               "percentage (e.g. KMEANS_ROLLOUT_STEPS=10,50,100)")
        return self._patch({"spec": {"predictor": {"canaryTrafficPercent": int(step.weight)}}})

    def promote(self, version: str) -> dict:
        return self._patch({"metadata": {"annotations": {STABLE_ANNOTATION: str(version)}},
                            "spec": {"predictor": {"canaryTrafficPercent": None}}})

    def drop(self, version: str) -> dict:
        stable = (self._get()["metadata"].get("annotations") or {}).get(STABLE_ANNOTATION)
        if stable is None:
            raise RolloutError(f"InferenceService {self.namespace}/{self.name} has no "
                               f"{STABLE_ANNOTATION} annotation; cannot tell what to return to")
        return self._patch(lambda isvc: {"spec": {"predictor": {
            **_with_version(isvc["spec"]["predictor"], stable), "canaryTrafficPercent": None}}})

    def window(self) -> dict:
        return self._revisions(lambda backend: backend.window())

    def live(self) -> dict:
        return self._revisions(lambda backend: backend.live())

    def _revisions(self, read) -> dict:
        if self.admin_token is None:
            raise RolloutError("reading the revisions' analysis windows needs KMEANS_ADMIN_TOKEN")
        merged = {}
        for url in self.window_urls.values():
            merged.update(read(LocalBackend(url, self.admin_token)))
        return merged


def _template_version(predictor: dict) -> str:
    version = (predictor.get("annotations") or {}).get(MODEL_ANNOTATION)
    if version is None:
        raise RolloutError(f"the predictor has no {MODEL_ANNOTATION} annotation; apply "
                           "k8s/base/predictor/inferenceservice.yaml from this repository")
    return version


def _with_version(predictor: dict, version: str) -> dict:
    """The predictor fields that pin ``version``: the annotation and the container's
    ``--version`` argument (a changed template is what makes KServe cut a revision)."""
    containers = copy.deepcopy(predictor.get("containers") or [])
    if not containers:
        raise RolloutError("the predictor has no containers; expected the kserve-container "
                           "running `kmeans-serve`")
    args = [a for a in containers[0].get("args", [])]
    if "--version" in args:
        i = args.index("--version")
        del args[i:i + 2]
    containers[0]["args"] = args + ["--version", version]
    return {"annotations": {**(predictor.get("annotations") or {}), MODEL_ANNOTATION: version},
            "containers": containers}
