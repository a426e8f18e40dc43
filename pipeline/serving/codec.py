"""Request bodies read into what the data plane scores: the JSON of v2 and v1, the binary
tensor extension, feature matrices and customer ids.

Everything here is pure: bytes in, Python values or arrays out, :class:`InvalidInput` (400)
naming what was wrong. The declared shapes are checked against the model and the batch limit
before any array is sized from them.
"""

from __future__ import annotations

import json
import math

import numpy as np
import orjson

from pipeline.serving.asgi import Request
from pipeline.serving.errors import InvalidInput, brief
from pipeline.serving.model import SegmentService
from pipeline.serving.protocol import BINARY_DTYPES, OUTPUTS

#: The bare tokens Python's ``json`` and Triton's JSON write for non-finite floats.
_CONSTANTS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def loads(raw: bytes, *, constants: bool = False):
    """The JSON body. With ``constants`` (the inference bodies), also what stock v2 clients
    send for non-finite floats (``mlserver infer``, tritonclient in JSON mode: Python's
    ``json.dumps``): the bare token ``NaN`` is a missing value, like null; ``Infinity``,
    ``-Infinity`` and a number beyond float64 parse as infinite and the row check refuses them
    naming the row and the feature. orjson parses every body; only a body it refuses that holds
    such a token goes through Python's ``json`` (so valid JSON pays nothing)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        if constants and (b"NaN" in raw or b"Infinity" in raw or "infinity" in str(err)):
            return _loads_with_constants(raw)
        raise InvalidInput(f"body is not valid JSON: {err}") from err


def _parse_int(text: str) -> int | float:
    """An integer as orjson reads it: beyond 64 bits, a float (infinite beyond float64)."""
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(text)


def _loads_with_constants(raw: bytes):
    """Python's JSON with ``NaN``/``Infinity``/``-Infinity``, as strict as orjson otherwise:
    UTF-8 only, and nothing orjson could not write back (a lone surrogate in a string)."""
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_CONSTANTS.__getitem__,
                          parse_int=_parse_int)
        orjson.dumps(body)  # refuses what orjson refuses to write: lone surrogates, huge ints
    except (ValueError, TypeError, RecursionError) as err:  # orjson's errors are TypeErrors
        raise InvalidInput(f"body is not valid JSON (bare NaN and Infinity are accepted as "
                           f"numbers): {err}") from err
    return body


def json_object(raw: bytes, what: str, example: str) -> dict:
    body = loads(raw)
    if not isinstance(body, dict):
        raise InvalidInput(f"the {what} body must be a JSON object like {example}")
    return body


def opt_str(body: dict, key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidInput(f"{key} must be a string, got {brief(value)}")
    return str(value)


def requested_outputs(wanted) -> list[str] | None:
    """The outputs a v2 request asks for, each once, in the order asked; None: all. More
    entries than there are outputs, or a name that is not an output, is refused: an answer
    never grows with the number of entries."""
    if wanted is None:
        return None
    if not isinstance(wanted, list) or not all(isinstance(o, dict) for o in wanted):
        raise InvalidInput("outputs must be a list of objects like {'name': 'cluster'}")
    if len(wanted) > len(OUTPUTS):
        raise InvalidInput(f"outputs lists {len(wanted)} entries; at most {len(OUTPUTS)} "
                           f"allowed, each output at most once: {list(OUTPUTS)}")
    names: list[str] = []
    unknown: list[str] = []
    for o in wanted:
        name = o.get("name")
        if isinstance(name, str) and name in OUTPUTS:
            if name not in names:  # asked twice, answered once
                names.append(name)
        else:
            unknown.append(brief(name, 40))
    if unknown:
        raise InvalidInput(f"requested outputs [{', '.join(unknown)}] are not produced; "
                           f"available: {list(OUTPUTS)}")
    return names


def parse_v2(request: Request, service: SegmentService) -> tuple[dict, tuple[str, object]]:
    """The v2 body and its one input as (kind, data): JSON, or the binary tensor extension.
    The declared shape is checked against the model and the batch limit first, in Python
    integers, so no array is ever sized from what a client declares."""
    raw = request.body
    header_len = request.headers.get(b"inference-header-content-length")
    blob = b""
    if header_len is not None:
        # At most 18 digits: int() of thousands of digits raises, and no body is that long.
        if not (header_len.isdigit() and len(header_len) <= 18) or int(header_len) > len(raw):
            raise InvalidInput(f"Inference-Header-Content-Length "
                               f"{brief(header_len.decode('latin-1'))} must be an integer no "
                               f"larger than the body ({len(raw)} bytes)")
        raw, blob = raw[:int(header_len)], raw[int(header_len):]
    body = loads(raw, constants=True)
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) \
            or len(body["inputs"]) != 1:
        raise InvalidInput("body must be an object with 'inputs': a list holding one tensor, "
                           "named 'features' (FP32/FP64, shape [n, d]) or 'customer_id' "
                           "(INT64, shape [n])")
    tensor = body["inputs"][0]
    if not isinstance(tensor, dict):
        raise InvalidInput("each input must be an object with name, shape, datatype and data")
    name, dtype, shape = check_input(tensor.get("name"), tensor.get("datatype"),
                                     tensor.get("shape"), service)
    params = tensor.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    data: list | np.ndarray | None
    if size is not None:
        if type(size) is not int or size != len(blob):
            raise InvalidInput(f"binary_data_size {brief(size)} does not match the {len(blob)} "
                               "bytes after the JSON header (one binary input is supported)")
        data = binary_tensor(blob, dtype, shape, "binary_data_size")
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise InvalidInput("data must be a (flat or nested) list of values")
    return body, input_data(name, data, shape)


def check_input(name, dtype, shape, service: SegmentService) -> tuple[str, str, list[int]]:
    """The one input tensor's name, datatype and declared shape, checked against the model and
    the batch limit (JSON and gRPC alike) before any array is sized from the shape."""
    if name not in ("features", "customer_id"):
        raise InvalidInput(f"input name {brief(name)} is not known; use 'features' or "
                           "'customer_id'")
    if not isinstance(shape, list) or not all(
            type(s) is int and s >= 0 for s in shape):
        raise InvalidInput(f"shape {brief(shape)} must be a list of non-negative integers")
    allowed = ("INT64", "INT32") if name == "customer_id" else ("FP32", "FP64")
    if dtype not in allowed:
        raise InvalidInput(f"{name} has datatype {brief(dtype)}; allowed: "
                           f"{', '.join(allowed)}")
    if name == "features":
        service.check_shape(shape)
    else:
        if len(shape) not in (1, 2) or shape[1:] not in ([], [1]):
            raise InvalidInput(f"customer_id has shape {brief(shape)}; allowed: [n] or [n, 1]")
        service.check_ids(shape[0], shape)
    return name, dtype, shape


def input_data(name: str, data: list | np.ndarray, shape: list[int]) -> tuple[str, object]:
    """A checked input's values as (kind, data): customer ids, or a float64 feature matrix."""
    if name == "customer_id":
        ids = int_list(data if isinstance(data, list) else data.tolist(), nested_ok=True)
        if shape not in ([len(ids)], [len(ids), 1]):
            raise InvalidInput(f"shape {shape} does not match {len(ids)} customer ids")
        return "customer_id", ids
    return "features", float_matrix(data, shape)


def binary_tensor(blob: bytes, dtype: str, shape: list[int], what: str) -> np.ndarray:
    """A tensor's raw little-endian bytes (the binary extension, gRPC's raw contents) as an
    array of ``shape``; ``what`` names the size in the error."""
    item = np.dtype(BINARY_DTYPES[dtype]).itemsize
    size = len(blob)
    if size != math.prod(shape) * item:  # Python integers: a declared shape cannot overflow
        raise InvalidInput(f"{what} {size} does not match shape {shape} of {dtype} "
                           f"({item} bytes each)")
    arr = np.frombuffer(blob, dtype=BINARY_DTYPES[dtype]).reshape(shape)
    return arr.astype(np.float64) if dtype.startswith("FP") else arr


#: What a feature value may be in JSON: a number or null (bool is not int here).
_VALUE_TYPES = frozenset({float, int, type(None)})


def float_matrix(data, shape: list[int] | None) -> np.ndarray:
    """Feature rows (numbers, null for missing) as a float64 [n, d] array, NaN where null."""
    if isinstance(data, np.ndarray):
        x = data
    else:
        flat = data
        if data and type(data[0]) is list:
            width = len(data[0])
            if any(type(r) is not list or len(r) != width for r in data):
                raise InvalidInput("feature rows must all be lists of the same length")
            flat = [v for r in data for v in r]
        if not _VALUE_TYPES.issuperset(map(type, flat)):  # a C loop; the culprit named below
            v = next(v for v in flat if type(v) not in _VALUE_TYPES)
            raise InvalidInput(f"feature values must be numbers or null, got {brief(v)} "
                               f"({type(v).__name__})")
        try:
            x = np.array(data, dtype=np.float64)  # None becomes NaN
        except (OverflowError, ValueError, TypeError) as err:
            raise InvalidInput(f"feature values do not fit a 64-bit float: {err}") from err
    if shape is None:
        if x.ndim != 2:
            raise InvalidInput("instances must be a list of feature rows")
        return x
    if x.ndim == 1:
        if len(shape) != 2 or shape[0] * shape[1] != x.size:
            raise InvalidInput(f"shape {shape} does not match {x.size} values")
        return x.reshape(shape)
    if list(x.shape) != shape:
        raise InvalidInput(f"shape {shape} does not match data of shape {list(x.shape)}")
    return x


def int_list(values, nested_ok: bool = False) -> list[int]:
    if nested_ok and values and all(type(v) is list and len(v) == 1 for v in values):
        values = [v[0] for v in values]
    out = []
    for v in values:
        if type(v) is not int:
            raise InvalidInput(f"customer_id must be an integer, got {brief(v)} "
                               f"({type(v).__name__})")
        if not -(2**63) <= v < 2**63:
            raise InvalidInput(f"customer_id {v} is outside the 64-bit integer range")
        out.append(v)
    return out


def parse_v1(raw: bytes, service: SegmentService) -> tuple[str, object]:
    """The v1 body's instances as (kind, data): customer ids, or a float feature matrix."""
    body = loads(raw, constants=True)
    if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
        raise InvalidInput("body must be an object with 'instances': a list of feature "
                           "vectors, of {feature: value} objects, or of {'customer_id': id}")
    instances = body["instances"]
    if not instances:
        raise InvalidInput("instances is empty; send at least 1 row")
    service.check_rows(len(instances))
    if all(isinstance(r, dict) and set(r) == {"customer_id"} for r in instances):
        service.check_ids(len(instances))
        return "customer_id", [r["customer_id"] for r in instances]
    if all(isinstance(r, dict) for r in instances):
        instances = _rows_from_objects(instances, service.feature_names)
    return "features", float_matrix(instances, None)


def _rows_from_objects(instances: list[dict], names: list[str]) -> list[list]:
    allowed = set(names)
    for i, row in enumerate(instances):
        unknown = sorted(set(row) - allowed)
        if unknown:
            raise InvalidInput(f"instance {i} has unknown features {brief(unknown, 200)}; "
                               f"allowed: {names}")
    return [[row.get(n) for n in names] for row in instances]
