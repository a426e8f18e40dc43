"""The OpenAPI 3.0 document of the whole server surface (served at ``/openapi.json``).

Written by hand next to the app so it describes exactly what the app accepts; the tests fuzz
the live server from this document with schemathesis.
"""

from __future__ import annotations

from pipeline.serving.protocol import OUTPUTS

_ERROR = {"description": "Error, with a message naming what was wrong",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(schema_ref: str, description: str = "OK") -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/"
                                                                 f"{schema_ref}"}}}}


def _body(schema_ref: str) -> dict:
    return {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{schema_ref}"}}}}


def _op(summary: str, ok: str, *, errors=(404,), body: str | None = None, security=None,
        tag: str = "v2") -> dict:
    op = {"summary": summary, "tags": [tag], "responses": {"200": _json(ok)}}
    for status in errors:
        op["responses"][str(status)] = _ERROR
    if body:
        op["requestBody"] = _body(body)
    if security:
        op["security"] = [{security: []}]
    return op


NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
        "description": "Model name"}
VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"},
           "description": "A loaded model version (stable or canary)"}
INPUT_ERRORS = (400, 401, 403, 404, 413, 415, 503)
ADMIN_ERRORS = (400, 401, 403, 404, 409, 413, 415, 422)


def document(model_name: str) -> dict:
    infer = _op("Assign clusters (Open Inference Protocol v2)", "InferResponse",
                errors=INPUT_ERRORS, body="InferRequest", security="predictToken")
    model_meta = _op("Model metadata", "ModelMetadata")
    model_ready = _op("Model readiness", "ModelReady", errors=(404, 503))
    admin = {"tags": ["admin"], "security": [{"adminToken": []}]}
    paths = {
        "/v2": {"get": _op("Server metadata", "ServerMetadata", errors=())},
        "/v2/health/live": {"get": _op("Liveness", "Live", errors=())},
        "/v2/health/ready": {"get": _op("Readiness", "Ready", errors=(503,))},
        "/v2/models/{name}": {"parameters": [NAME], "get": model_meta},
        "/v2/models/{name}/ready": {"parameters": [NAME], "get": model_ready},
        "/v2/models/{name}/infer": {"parameters": [NAME], "post": infer},
        "/v2/models/{name}/versions/{version}": {"parameters": [NAME, VERSION],
                                                 "get": model_meta},
        "/v2/models/{name}/versions/{version}/ready": {"parameters": [NAME, VERSION],
                                                       "get": model_ready},
        "/v2/models/{name}/versions/{version}/infer": {"parameters": [NAME, VERSION],
                                                       "post": infer},
        "/v1/models": {"get": _op("List models (KServe v1)", "ModelList", errors=(), tag="v1")},
        "/v1/models/{name}": {"parameters": [NAME], "get": _op(
            "Model readiness (KServe v1)", "ModelReady", errors=(404, 503), tag="v1")},
        "/v1/models/{name}:predict": {"parameters": [NAME], "post": _op(
            "Assign clusters (KServe v1)", "V1Response", errors=INPUT_ERRORS,
            body="V1Request", security="predictToken", tag="v1")},
        "/metrics": {"get": {"summary": "Prometheus metrics", "tags": ["ops"], "responses": {
            "200": {"description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "tags": ["ops"], "responses": {
            "200": {"description": "OpenAPI 3.0",
                    "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        "/admin/state": {"get": {**_op("Routing, loaded versions, current window",
                                       "AdminState", errors=(401, 403)), **admin}},
        "/admin/load": {"post": {**_op("Load a version from the registry into a slot",
                                       "RoutingReply", errors=ADMIN_ERRORS, body="LoadRequest"),
                                 **admin}},
        "/admin/traffic": {"post": {**_op("Set the canary's weight and mode", "RoutingReply",
                                          errors=ADMIN_ERRORS, body="TrafficRequest"), **admin}},
        "/admin/promote": {"post": {**_op("Make the canary the stable version", "RoutingReply",
                                          errors=ADMIN_ERRORS, body="VersionRequest"), **admin}},
        "/admin/drop": {"post": {**_op("Remove the canary", "RoutingReply",
                                       errors=ADMIN_ERRORS, body="VersionRequest"), **admin}},
        "/admin/window": {"post": {**_op("Each version's figures since the last call; starts "
                                         "a new analysis window", "AdminWindow",
                                         errors=(401, 403)), **admin}},
    }
    number_or_null = {"type": "number", "nullable": True}
    schemas = {
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string"}}},
        "Live": {"type": "object", "properties": {"live": {"type": "boolean"}}},
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
                "data": {"type": "array", "description": "Rows (nested) or row-major values; "
                                                        "null marks a missing value",
                         "items": {"oneOf": [number_or_null,
                                             {"type": "array", "items": number_or_null}]}},
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
                "outputs": {"type": "array", "items": {
                    "type": "object", "required": ["name"],
                    "properties": {"name": {"type": "string", "enum": list(OUTPUTS)}}}},
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
                                   "data": {"type": "array"}}}}}},
        "V1Request": {
            "type": "object", "required": ["instances"],
            "properties": {"instances": {"type": "array", "minItems": 1, "items": {"oneOf": [
                {"type": "array", "items": number_or_null},
                {"type": "object", "additionalProperties": number_or_null},
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
            "window": {"type": "object"}}},
        "AdminWindow": {"type": "object", "properties": {
            "routing": {"$ref": "#/components/schemas/Routing"},
            "versions": {"type": "object", "description": "Per version: requests, errors, "
                                                          "error_rate, latency_ms, distance, "
                                                          "cluster_share, agreement"}}},
        "LoadRequest": {"type": "object", "properties": {
            "version": {"type": "string"}, "alias": {"type": "string"},
            "slot": {"type": "string", "enum": ["canary", "stable"]}}},
        "TrafficRequest": {"type": "object", "required": ["weight"], "properties": {
            "weight": {"type": "number", "minimum": 0, "maximum": 100},
            "mode": {"type": "string", "enum": ["canary", "shadow"]}}},
        "VersionRequest": {"type": "object", "properties": {"version": {"type": "string"}}},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "kmeans-platform inference server", "version": "1",
                 "description": f"Cluster assignment for model {model_name!r}: Open Inference "
                                "Protocol v2 REST, KServe v1, admin API for the rollout "
                                "controller. Errors are JSON {'error': message}."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "predictToken": {"type": "http", "scheme": "bearer",
                             "description": "KMEANS_SERVING_TOKEN (required in production)"},
            "adminToken": {"type": "http", "scheme": "bearer",
                           "description": "KMEANS_ADMIN_TOKEN"}}},
    }
