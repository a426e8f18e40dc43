"""The server's HTTP surface, declared once.

:data:`ROUTES` lists every route: its path template, methods, the app method that handles it,
its token guard, and what the OpenAPI document says of it. The app's :class:`Router` and the
OpenAPI document (:func:`pipeline.serving.openapi.document`) are both built from this table, so
a route cannot be served without being documented, nor documented without being served.

Path templates use ``{param}`` for a whole segment. A last segment may add a custom verb after a
colon (KServe v1's ``/v1/models/{name}:predict``): routes that differ only by their verb share
one shape, and the verb picks the route.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Generic, Literal, TypeVar

from pipeline.serving.errors import ModelNotFound, brief

Guard = Literal["predict", "admin"]
GUARDS: tuple[Guard, ...] = ("predict", "admin")
METHODS = ("GET", "POST")
_PARAM = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Route:
    """One path of the server and what it does."""

    path: str  # template, e.g. "/v2/models/{name}/infer"
    name: str  # the `route` label of the request metrics and of the access log
    handler: str  # the name of the handler that answers it (a DataPlane or AdminApi method)
    summary: str
    response: str  # component schema of the 200 answer
    methods: tuple[str, ...] = ("GET",)
    guard: Guard | None = None  # the bearer token it needs ("predict" is optional when unset)
    request: str | None = None  # component schema of the body
    errors: tuple[int, ...] = ()  # statuses of its own; the common ones follow from its shape
    tag: str = "v2"
    media_type: str = "application/json"
    limited: bool = True  # counts toward max_concurrency (probes and /metrics must not)

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if not self.methods or bad:
            raise ValueError(f"route {self.path!r} has methods {list(self.methods)}; allowed: "
                             f"a non-empty subset of {list(METHODS)}")
        if self.guard is not None and self.guard not in GUARDS:
            raise ValueError(f"route {self.path!r} has guard {self.guard!r}; allowed: "
                             f"{list(GUARDS)} or None")
        if not self.path.startswith("/"):
            raise ValueError(f"route path {self.path!r} must start with '/'")

    @property
    def params(self) -> tuple[str, ...]:
        """The path parameters, in order."""
        return tuple(_PARAM.findall(self.path))

    @property
    def error_statuses(self) -> tuple[int, ...]:
        """Every error status the route can answer: its own, plus those that follow from its
        shape (a path parameter names a model: 404; a guard: 401 and 403; a JSON body: 400;
        any body read: 408, 413 and 415; the concurrency limit: 503)."""
        found = set(self.errors)
        if self.params:
            found.add(404)
        if self.guard:
            found |= {401, 403}
        if self.request:
            found.add(400)
        if "POST" in self.methods:
            found |= {408, 413, 415}
        if self.limited:
            found.add(503)
        return tuple(sorted(found))


def _model_routes(suffix: str, **fields: Any) -> tuple[Route, Route]:
    """A v2 model route and its twin pinned to a loaded version (``/versions/{version}``)."""
    return (Route(path=f"/v2/models/{{name}}{suffix}", **fields),
            Route(path=f"/v2/models/{{name}}/versions/{{version}}{suffix}", **fields))


ROUTES: tuple[Route, ...] = (
    # Open Inference Protocol v2
    Route(path="/v2", name="server_metadata", handler="server_metadata",
          summary="Server metadata", response="ServerMetadata"),
    Route(path="/v2/health/live", name="live", handler="live",
          summary="Liveness", response="Live", limited=False),
    Route(path="/v2/health/ready", name="ready", handler="ready",
          summary="Readiness", response="Ready", errors=(503,), limited=False),
    *_model_routes("", name="model_metadata", handler="model_metadata",
                   summary="Model metadata", response="ModelMetadata"),
    *_model_routes("/ready", name="model_ready", handler="model_ready",
                   summary="Model readiness", response="ModelReady", errors=(503,)),
    *_model_routes("/infer", name="infer", handler="infer", methods=("POST",), guard="predict",
                   summary="Assign clusters (Open Inference Protocol v2)",
                   request="InferRequest", response="InferResponse"),
    # KServe v1 (its liveness probe, the kserve SDK's `is_server_live`, asks `GET /`)
    Route(path="/", name="live_v1", handler="live_v1", tag="v1",
          summary="Liveness (KServe v1)", response="LiveV1", limited=False),
    Route(path="/v1/models", name="list_models", handler="list_models", tag="v1",
          summary="List models (KServe v1)", response="ModelList"),
    Route(path="/v1/models/{name}", name="model_ready_v1", handler="model_ready", tag="v1",
          summary="Model readiness (KServe v1)", response="ModelReady", errors=(503,)),
    Route(path="/v1/models/{name}:predict", name="predict", handler="predict_v1", tag="v1",
          methods=("POST",), guard="predict", summary="Assign clusters (KServe v1)",
          request="V1Request", response="V1Response"),
    # operations
    Route(path="/metrics", name="metrics", handler="prometheus", tag="ops",
          summary="Prometheus metrics", response="PrometheusText", media_type="text/plain",
          limited=False),
    Route(path="/openapi.json", name="openapi", handler="openapi", tag="ops",
          summary="This document", response="OpenAPIDocument"),
    # the admin API the rollout controller drives
    Route(path="/admin/state", name="admin_state", handler="admin_state", tag="admin",
          guard="admin", summary="Routing, loaded versions, current window",
          response="AdminState"),
    Route(path="/admin/load", name="admin_load", handler="admin_load", tag="admin",
          methods=("POST",), guard="admin", summary="Load a version from the registry into a slot",
          request="LoadRequest", response="RoutingReply", errors=(404, 409, 422)),
    Route(path="/admin/traffic", name="admin_traffic", handler="admin_traffic", tag="admin",
          methods=("POST",), guard="admin", summary="Set the canary's weight and mode",
          request="TrafficRequest", response="RoutingReply", errors=(409,)),
    Route(path="/admin/promote", name="admin_promote", handler="admin_promote", tag="admin",
          methods=("POST",), guard="admin", summary="Make the canary the stable version",
          request="VersionRequest", response="RoutingReply", errors=(409,)),
    Route(path="/admin/drop", name="admin_drop", handler="admin_drop", tag="admin",
          methods=("POST",), guard="admin", summary="Remove the canary",
          request="VersionRequest", response="RoutingReply", errors=(409,)),
    Route(path="/admin/window", name="admin_window", handler="admin_window", tag="admin",
          methods=("POST",), guard="admin",
          summary="Each version's figures since the last call; starts a new analysis window",
          response="AdminWindow"),
)

NO_ROUTE_HINT = ("see /openapi.json for the routes (/v2/models/{name}/infer, "
                 "/v1/models/{name}:predict, ...)")

T = TypeVar("T")


class _Shape(Generic[T]):
    """Templated routes with the same literal segments at the same places; they differ at most
    by the verb of their last segment."""

    __slots__ = ("param_at", "target", "by_verb", "verb_paths")

    def __init__(self, param_at: tuple[tuple[str, int], ...]):
        self.param_at = param_at  # (name, segment index)
        self.target: T | None = None  # the route, when no route of this shape has a verb
        self.by_verb: dict[str, T] = {}  # "" for the route without a verb
        self.verb_paths: list[str] = []

    def add(self, route: Route, verb: str, target: T) -> None:
        if verb in self.by_verb:
            raise ValueError(f"route {route.path!r} is declared twice")
        self.by_verb[verb] = target
        if verb:
            self.verb_paths.append(route.path)
        self.target = None if self.verb_paths else self.by_verb[""]

    def match(self, parts: list[str]) -> tuple[T, dict[str, str]]:
        params = {name: parts[i] for name, i in self.param_at}
        if self.target is not None:
            return self.target, params
        # With verbs, the last parameter ends at the first colon (KServe v1's `name:predict`).
        last, at = self.param_at[-1]
        value, _, verb = parts[at].partition(":")
        target = self.by_verb.get(verb)
        if target is None:
            shown = value if len(value) <= 64 else f"{value[:64]}…"
            use = ", ".join(p.replace(f"{{{last}}}", shown) for p in self.verb_paths)
            raise ModelNotFound(f"verb {brief(verb)} is not supported; use {use}")
        params[last] = value
        return target, params


class Router(Generic[T]):
    """Finds the route of a request path, built once from a route table.

    A static path is one dict lookup. A templated path is split into segments; for each layout
    of that many segments (in practice one), the literal segments are the key of one more dict
    lookup, and the other segments are the parameters. A path resolved once is remembered, so
    the paths clients repeat (one model, one or two versions) cost one dict lookup: a one-row
    request takes about 20 µs in-process, so routing is part of its budget.
    ``bind`` turns each :class:`Route` into what :meth:`resolve` returns (the app binds its
    handler method). The parameters returned are shared between requests: read-only.
    """

    #: How many resolved paths are remembered, and the longest path remembered: the memory
    #: is forgotten at once when full, so odd paths cannot grow it without bound.
    SEEN_MAX, SEEN_PATH_MAX = 4096, 256

    def __init__(self, routes: Iterable[Route], bind: Callable[[Route], T]):
        self.static: dict[str, T] = {}
        self._seen: dict[str, tuple[T, Mapping[str, str]]] = {}
        # segment count -> [(literal picker, {literal segments: shape})]
        self._templated: dict[int, list[tuple[Callable[[list[str]], tuple],
                                              dict[tuple, _Shape[T]]]]] = {}
        layouts: dict[tuple[int, tuple[int, ...]], dict[tuple, _Shape[T]]] = {}
        for route in routes:
            target = bind(route)
            if not route.params:
                path = route.path.rstrip("/") or "/"
                if path in self.static:
                    raise ValueError(f"route {route.path!r} is declared twice")
                self.static[path] = target
                continue
            segments = route.path.strip("/").split("/")
            *head, last = segments
            last, _, verb = last.partition(":")
            if ":" in "".join(head) or (verb and not _PARAM.fullmatch(last)):
                raise ValueError(f"route {route.path!r}: a ':verb' may only follow a "
                                 "parameter in the last segment")
            segments = [*head, last]
            for s in segments:
                if "{" in s and not _PARAM.fullmatch(s):
                    raise ValueError(f"route {route.path!r}: segment {s!r} must be a literal "
                                     "or one whole {parameter}")
            literal_at = tuple(i for i, s in enumerate(segments) if not _PARAM.fullmatch(s))
            key = tuple(segments[i] for i in literal_at)
            table = layouts.get((len(segments), literal_at))
            if table is None:
                table = layouts[len(segments), literal_at] = {}
                self._templated.setdefault(len(segments), []).append(
                    (_picker(literal_at), table))
            shape = table.get(key)
            if shape is None:
                shape = table[key] = _Shape(tuple(
                    (s[1:-1], i) for i, s in enumerate(segments) if _PARAM.fullmatch(s)))
            shape.add(route, verb, target)

    def resolve(self, path: str) -> tuple[T, Mapping[str, str]]:
        """The bound route of ``path`` and its path parameters (read-only);
        :class:`ModelNotFound` (404) when nothing matches."""
        hit = self._seen.get(path)
        if hit is not None:
            return hit
        hit = self._find(path)
        if len(path) <= self.SEEN_PATH_MAX:
            if len(self._seen) >= self.SEEN_MAX:
                self._seen.clear()
            self._seen[path] = hit
        return hit

    def _find(self, path: str) -> tuple[T, Mapping[str, str]]:
        target = self.static.get(path.rstrip("/") or "/")
        if target is not None:
            return target, {}
        parts = path.strip("/").split("/")
        for pick, table in self._templated.get(len(parts), ()):
            shape = table.get(pick(parts))
            if shape is not None:
                return shape.match(parts)
        raise ModelNotFound(f"no route {brief(path)}; {NO_ROUTE_HINT}")


def _picker(positions: tuple[int, ...]) -> Callable[[list[str]], tuple]:
    """The segments at ``positions`` as a tuple (itemgetter returns a bare item for one)."""
    if len(positions) == 1:
        at = positions[0]
        return lambda parts: (parts[at],)
    if not positions:
        return lambda parts: ()
    return itemgetter(*positions)

