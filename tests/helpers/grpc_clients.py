"""Stock gRPC v2 clients against a running server, in a virtualenv of their own (run by
``tests/integration/server/test_grpc.py`` with that venv's Python; nothing of this project is
importable here).

    python grpc_clients.py kserve|tritonclient '{"address": "127.0.0.1:PORT", "token": "...",
                                                 "model": "...", "rows": [[...]], "ids": [1]}'

Prints one JSON object: the client's (the ``kserve`` SDK's ``InferenceGRPCClient`` or
``tritonclient.grpc``) health answers, its inference results (each output as a list), and the
status code and message of the calls that must fail. One client per process: both libraries
register ``inference.*`` in protobuf's default pool, and a process importing both fails.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import sys

import grpc
import numpy as np


def _code(error: Exception) -> dict:
    code = getattr(error, "code", None)
    code = code() if callable(code) else code
    details = getattr(error, "details", None)
    details = details() if callable(details) else details
    return {"code": getattr(code, "name", str(code)), "message": str(details or error)}


def _plain(values: np.ndarray) -> list:
    """An output as JSON values (BYTES elements decoded)."""
    return [v.decode() if isinstance(v, bytes) else v for v in values.tolist()]


async def kserve_client(spec: dict) -> dict:
    from kserve.inference_client import InferenceGRPCClient
    from kserve.protocol.infer_type import InferInput, InferRequest

    auth = [("authorization", f"Bearer {spec['token']}")]
    rows = np.asarray(spec["rows"], dtype=np.float32)
    out: dict = {"version": importlib.metadata.version("kserve")}
    client = InferenceGRPCClient(spec["address"], timeout=30)
    try:
        out["live"] = await client.is_server_live()
        out["ready"] = await client.is_server_ready()
        out["model_ready"] = await client.is_model_ready(spec["model"])
        results = {}
        for binary in (True, False):  # raw_input_contents, then contents
            tensor = InferInput("features", list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows, binary_data=binary)
            request = InferRequest(spec["model"], [tensor], request_id="kserve-1")
            response = await client.infer(request, headers=auth)
            results["raw" if binary else "contents"] = {
                "id": response.id, "model_version": response.model_version,
                **{o.name: _plain(o.as_numpy()) for o in response.outputs}}
        ids = InferInput("customer_id", [len(spec["ids"])], "INT64")
        ids.set_data_from_numpy(np.asarray(spec["ids"], dtype=np.int64))
        try:
            response = await client.infer(InferRequest(spec["model"], [ids]), headers=auth)
            results["ids"] = {o.name: _plain(o.as_numpy()) for o in response.outputs}
        except grpc.RpcError as error:
            results["ids"] = _code(error)
        out["infer"] = results
        failures = {}
        tensor = InferInput("features", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        for name, headers in (("no_token", None), ("wrong_token",
                                                   [("authorization", "Bearer wrong-token")])):
            try:
                await client.infer(InferRequest(spec["model"], [tensor]), headers=headers)
                failures[name] = {"code": "OK"}
            except grpc.RpcError as error:
                failures[name] = _code(error)
        out["failures"] = failures
    finally:
        await client.close()
    return out


def triton_client(spec: dict) -> dict:
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    headers = {"authorization": f"Bearer {spec['token']}"}
    rows = np.asarray(spec["rows"], dtype=np.float32)
    out: dict = {"version": importlib.metadata.version("tritonclient")}
    client = triton.InferenceServerClient(spec["address"])
    try:
        out["live"] = client.is_server_live()
        out["ready"] = client.is_server_ready()
        out["model_ready"] = client.is_model_ready(spec["model"])
        meta = client.get_model_metadata(spec["model"], as_json=True)
        out["metadata"] = {"name": meta["name"], "inputs": meta["inputs"]}
        tensor = triton.InferInput("features", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        result = client.infer(spec["model"], [tensor], headers=headers, request_id="triton-1",
                              outputs=[triton.InferRequestedOutput("cluster"),
                                       triton.InferRequestedOutput("distance")])
        response = result.get_response(as_json=True)
        out["infer"] = {"id": response.get("id"), "names": [o["name"] for o in
                                                           response["outputs"]],
                        "cluster": result.as_numpy("cluster").tolist(),
                        "distance": result.as_numpy("distance").tolist()}
        failures = {}
        bad = triton.InferInput("features", [rows.shape[0], rows.shape[1] + 1], "FP32")
        bad.set_data_from_numpy(np.zeros((rows.shape[0], rows.shape[1] + 1), np.float32))
        for name, call in (("bad_shape", lambda: client.infer(spec["model"], [bad],
                                                              headers=headers)),
                           ("unknown_model", lambda: client.infer("nope", [tensor],
                                                                  headers=headers))):
            try:
                call()
                failures[name] = {"code": "OK"}
            except InferenceServerException as error:
                failures[name] = {"code": str(error.status()), "message": error.message()}
        out["failures"] = failures
    finally:
        client.close()
    return out


def main() -> None:
    client, spec = sys.argv[1], json.loads(sys.argv[2])
    if client == "kserve":
        print(json.dumps(asyncio.run(kserve_client(spec))))
    else:
        print(json.dumps(triton_client(spec)))


if __name__ == "__main__":
    main()
