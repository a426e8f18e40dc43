"""The OpenAPI 3.0 document of the whole server surface (served at ``/openapi.json``).

Paths, operations, security and error responses derive from the route table
(:data:`pipeline.serving.routes.ROUTES`), the same one the app routes with; the bodies are
described once, here, as component schemas. The app builds the document once and serves the
same bytes on every request. The tests fuzz the live server from it with schemathesis, and
check that every documented path resolves to its route.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from pipeline.serving.protocol import OUTPUTS
from pipeline.serving.routes import ROUTES, Route

#: The path parameters any route template may use.
PARAMETERS: dict[str, dict[str, Any]] = {
    "name": {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
             "description": "Model name"},
    "version": {"name": "version", "in": "path", "required": True,
                "schema": {"type": "string"},
                "description": "A loaded model version (stable or canary)"},
}

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "predictToken": {"type": "http", "scheme": "bearer",
                     "description": "KMEANS_SERVING_TOKEN (required in production)"},
    "adminToken": {"type": "http", "scheme": "bearer", "description": "KMEANS_ADMIN_TOKEN"},
}
#: The security scheme of each route guard.
GUARD_SCHEMES = {"predict": "predictToken", "admin": "adminToken"}

_ERROR = {"description": "Error, with a message naming what was wrong",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}

_NUMBER_OR_NULL: dict[str, Any] = {"type": "number", "nullable": True}
#: An output's values: cluster ids (INT64), distances (FP64; null where a row failed), flags
#: (BOOL), versions and errors (BYTES).
_OUTPUT_VALUE: dict[str, Any] = {"anyOf": [
    {"type": "integer"}, _NUMBER_OR_NULL, {"type": "boolean"}, {"type": "string"}]}
#: What a feature value may be, for the tensor's and the instances' descriptions.
MISSING_VALUES = (
    "Rows (nested) or row-major values. null marks a missing value (imputed with the "
    "training median); so does the bare token NaN, which stock clients (tritonclient in JSON "
    "mode, `mlserver infer`, Python's json) write for a missing float, although it is not "
    "JSON. Infinity, -Infinity and numbers beyond float64 are refused (400 naming the row and "
    "the feature), as is a row with no known value or a value outside the feature's accepted "
    "range.")
#: The bodies the handlers read and write, by the names the route table uses.
SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {"type": "object", "required": ["error"],
              "properties": {"error": {"type": "string"}}},
    "Live": {"type": "object", "properties": {"live": {"type": "boolean"}}},
    "LiveV1": {"type": "object", "required": ["status"],
               "properties": {"status": {"type": "string", "enum": ["alive"]}}},
    "Ready": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
    "ModelReady": {"type": "object", "properties": {"name": {"type": "string"},
                                                    "ready": {"type": "boolean"}}},
    "ModelList": {"type": "object", "properties": {
        "models": {"type": "array", "items": {"type": "string"}}}},
    "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"],
                       "properties": {"name": {"type": "string"},
                                      "version": {"type": "string"},
                                      "extensions": {"type": "array",
                                                     "items": {"type": "string"}}}},
    "TensorMetadata": {"type": "object", "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}}}},
    "ModelMetadata": {"type": "object", "required": ["name", "versions", "platform",
                                                     "inputs", "outputs"],
                      "properties": {
                          "name": {"type": "string"},
                          "versions": {"type": "array", "items": {"type": "string"}},
                          "platform": {"type": "string"},
                          "inputs": {"type": "array",
                                     "items": {"$ref": "#/components/schemas/TensorMetadata"}},
                          "outputs": {"type": "array",
                                      "items": {"$ref": "#/components/schemas/TensorMetadata"}},
                          "parameters": {"type": "object"}}},
    "FeaturesTensor": {
        "type": "object", "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"type": "string", "enum": ["features"]},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0},
                      "minItems": 2, "maxItems": 2, "example": [1, 12]},
            "datatype": {"type": "string", "enum": ["FP32", "FP64"]},
            "data": {"type": "array", "description": MISSING_VALUES,
                     "items": {"oneOf": [_NUMBER_OR_NULL,
                                         {"type": "array", "items": _NUMBER_OR_NULL}]}},
            "parameters": {"type": "object"}}},
    "CustomerIdTensor": {
        "type": "object", "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"type": "string", "enum": ["customer_id"]},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0},
                      "minItems": 1, "maxItems": 2},
            "datatype": {"type": "string", "enum": ["INT64", "INT32"]},
            "data": {"type": "array", "items": {"type": "integer"}},
            "parameters": {"type": "object"}}},
    "InferRequest": {
        "type": "object", "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {"oneOf": [
                {"$ref": "#/components/schemas/FeaturesTensor"},
                {"$ref": "#/components/schemas/CustomerIdTensor"}]}},
            "outputs": {
                "type": "array", "maxItems": len(OUTPUTS),
                "description": "Each output at most once (a repeated name is answered once); "
                               "absent: every output",
                "items": {"type": "object", "required": ["name"], "properties": {
                    "name": {"type": "string", "enum": list(OUTPUTS)}}}},
            "parameters": {"type": "object"}}},
    "InferResponse": {
        "type": "object", "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {"type": "array", "items": {
                "type": "object", "required": ["name", "datatype", "shape", "data"],
                "properties": {"name": {"type": "string", "enum": list(OUTPUTS)},
                               "datatype": {"type": "string"},
                               "shape": {"type": "array", "items": {"type": "integer"}},
                               "data": {"type": "array", "items": _OUTPUT_VALUE,
                                        "description": "One value per row, of the output's "
                                                       "datatype"}}}}}},
    "V1Request": {
        "type": "object", "required": ["instances"],
        "properties": {"instances": {
            "type": "array", "minItems": 1, "description": MISSING_VALUES, "items": {"oneOf": [
                {"type": "array", "items": _NUMBER_OR_NULL},
                {"type": "object", "additionalProperties": _NUMBER_OR_NULL},
                {"type": "object", "required": ["customer_id"],
                 "properties": {"customer_id": {"type": "integer"}}}]}}}},
    "V1Response": {
        "type": "object", "required": ["predictions"],
        "properties": {"predictions": {"type": "array", "items": {
            "type": "object", "required": ["model_version"],
            "properties": {"cluster": {"type": "integer"}, "distance": {"type": "number"},
                           "runner_up": {"type": "integer"}, "margin": {"type": "number"},
                           "ood": {"type": "boolean"}, "stale": {"type": "boolean"},
                           "model_version": {"type": "string"},
                           "error": {"type": "string"}}}}}},
    "Routing": {"type": "object", "properties": {
        "stable": {"type": "string", "nullable": True},
        "canary": {"type": "string", "nullable": True},
        "weight": {"type": "number"}, "mode": {"type": "string",
                                               "enum": ["canary", "shadow"]}}},
    "RoutingReply": {"type": "object", "properties": {
        "routing": {"$ref": "#/components/schemas/Routing"}}},
    "AdminState": {"type": "object", "properties": {
        "routing": {"$ref": "#/components/schemas/Routing"},
        "loaded": {"type": "array", "items": {"type": "string"}},
        "inflight": {"type": "integer"}, "max_concurrency": {"type": "integer"},
        "admin_inflight": {"type": "integer"}, "max_admin_concurrency": {"type": "integer"},
        "queued": {"type": "integer", "nullable": True,
                   "description": "Pipelined requests read ahead, waiting behind another "
                                  "of their connection, over all connections"},
        "max_queued": {"type": "integer"},
        "window": {"type": "object"}}},
    "AdminWindow": {"type": "object", "properties": {
        "routing": {"$ref": "#/components/schemas/Routing"},
        "versions": {"type": "object", "description": "Per version: requests, errors, "
                                                      "error_rate, latency_ms, distance, "
                                                      "cluster_share, agreement"}}},
    "LoadRequest": {"type": "object", "additionalProperties": False, "properties": {
        "version": {"type": "string", "pattern": "^[1-9][0-9]{0,17}$",
                    "description": "A registry version (exactly one of version and alias)"},
        "alias": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_-]{0,62}$"},
        "slot": {"type": "string", "enum": ["canary", "stable"]}}},
    "TrafficRequest": {"type": "object", "required": ["weight"], "properties": {
        "weight": {"type": "number", "minimum": 0, "maximum": 100},
        "mode": {"type": "string", "enum": ["canary", "shadow"]}}},
    "VersionRequest": {"type": "object", "properties": {"version": {"type": "string"}}},
    "PrometheusText": {"type": "string", "description": "Prometheus text exposition format"},
    "OpenAPIDocument": {"type": "object", "description": "OpenAPI 3.0"},
}


def _ref(schema: str) -> dict[str, str]:
    if schema not in SCHEMAS:
        raise ValueError(f"schema {schema!r} is not among the components {sorted(SCHEMAS)}")
    return {"$ref": f"#/components/schemas/{schema}"}


def operation(route: Route) -> dict[str, Any]:
    """The OpenAPI operation of ``route`` (the same for each of its methods)."""
    op: dict[str, Any] = {
        "summary": route.summary, "tags": [route.tag],
        "responses": {"200": {"description": "OK", "content": {
            route.media_type: {"schema": _ref(route.response)}}}}}
    for status in route.error_statuses:
        op["responses"][str(status)] = _ERROR
    if route.request:
        op["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": _ref(route.request)}}}
    if route.guard:
        op["security"] = [{GUARD_SCHEMES[route.guard]: []}]
    return op


def document(model_name: str, routes: Iterable[Route] = ROUTES) -> dict[str, Any]:
    """The OpenAPI 3.0 document of ``routes`` served for model ``model_name``."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if route.path in paths:
            raise ValueError(f"route {route.path!r} is declared twice")
        unknown = [p for p in route.params if p not in PARAMETERS]
        if unknown:
            raise ValueError(f"route {route.path!r} has path parameters {unknown}; declared: "
                             f"{sorted(PARAMETERS)}")
        item: dict[str, Any] = {}
        if route.params:
            item["parameters"] = [PARAMETERS[p] for p in route.params]
        for method in route.methods:
            item[method.lower()] = operation(route)
        paths[route.path] = item
    # A copy: callers (schemathesis) may resolve references in place.
    return copy.deepcopy({
        "openapi": "3.0.3",
        "info": {"title": "kmeans-platform inference server", "version": "1",
                 "description": f"Cluster assignment for model {model_name!r}: Open Inference "
                                "Protocol v2 REST, KServe v1, admin API for the rollout "
                                "controller. Errors are JSON {'error': message}. In "
                                "inference bodies a missing feature value is null or the "
                                "bare token NaN (as tritonclient and `mlserver infer` send "
                                "it); Infinity is refused with a 400 naming the row and the "
                                "feature."},
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": SECURITY_SCHEMES},
    })
