"""The Open Inference Protocol's gRPC messages (``grpc_predict_v2.proto``, package
``inference``), built at import from a table instead of generated code.

The server needs only the messages of the methods it serves (ServerLive, ServerReady,
ModelReady, ServerMetadata, ModelMetadata, ModelInfer) and the two shared ones
(``InferParameter``, ``InferTensorContents``). Declaring them here keeps the serving image free
of protoc's output, and of its pin to one protobuf major version: the descriptor goes into a
pool of its own, so a client library in the same process (tritonclient's ``grpc_service.proto``
declares the same names) never clashes with it. Field names and numbers are the protocol's;
``tests/integration/server/test_grpc.py`` compares every field with tritonclient's generated
code.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"bool": _F.TYPE_BOOL, "int32": _F.TYPE_INT32, "int64": _F.TYPE_INT64,
            "uint32": _F.TYPE_UINT32, "uint64": _F.TYPE_UINT64, "float": _F.TYPE_FLOAT,
            "double": _F.TYPE_DOUBLE, "string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES}

#: message -> [(field, number, type, repeated)]; a type not in _SCALARS is a message (its
#: full name, or "map" for ``map<string, InferParameter> parameters``); a nested message's name
#: is "Outer.Inner". ``oneof`` fields are listed in _ONEOFS.
_MESSAGES: dict[str, list[tuple[str, int, str, bool]]] = {
    "ServerLiveRequest": [],
    "ServerLiveResponse": [("live", 1, "bool", False)],
    "ServerReadyRequest": [],
    "ServerReadyResponse": [("ready", 1, "bool", False)],
    "ModelReadyRequest": [("name", 1, "string", False), ("version", 2, "string", False)],
    "ModelReadyResponse": [("ready", 1, "bool", False)],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [("name", 1, "string", False), ("version", 2, "string", False),
                               ("extensions", 3, "string", True)],
    "ModelMetadataRequest": [("name", 1, "string", False), ("version", 2, "string", False)],
    "ModelMetadataResponse": [("name", 1, "string", False), ("versions", 2, "string", True),
                              ("platform", 3, "string", False),
                              ("inputs", 4, "ModelMetadataResponse.TensorMetadata", True),
                              ("outputs", 5, "ModelMetadataResponse.TensorMetadata", True)],
    "ModelMetadataResponse.TensorMetadata": [("name", 1, "string", False),
                                             ("datatype", 2, "string", False),
                                             ("shape", 3, "int64", True)],
    "InferParameter": [("bool_param", 1, "bool", False), ("int64_param", 2, "int64", False),
                       ("string_param", 3, "string", False),
                       ("double_param", 4, "double", False),
                       ("uint64_param", 5, "uint64", False)],
    "InferTensorContents": [("bool_contents", 1, "bool", True), ("int_contents", 2, "int32", True),
                            ("int64_contents", 3, "int64", True),
                            ("uint_contents", 4, "uint32", True),
                            ("uint64_contents", 5, "uint64", True),
                            ("fp32_contents", 6, "float", True),
                            ("fp64_contents", 7, "double", True),
                            ("bytes_contents", 8, "bytes", True)],
    "ModelInferRequest": [("model_name", 1, "string", False),
                          ("model_version", 2, "string", False), ("id", 3, "string", False),
                          ("parameters", 4, "map", True),
                          ("inputs", 5, "ModelInferRequest.InferInputTensor", True),
                          ("outputs", 6, "ModelInferRequest.InferRequestedOutputTensor", True),
                          ("raw_input_contents", 7, "bytes", True)],
    "ModelInferRequest.InferInputTensor": [
        ("name", 1, "string", False), ("datatype", 2, "string", False),
        ("shape", 3, "int64", True), ("parameters", 4, "map", True),
        ("contents", 5, "InferTensorContents", False)],
    "ModelInferRequest.InferRequestedOutputTensor": [("name", 1, "string", False),
                                                     ("parameters", 2, "map", True)],
    "ModelInferResponse": [("model_name", 1, "string", False),
                           ("model_version", 2, "string", False), ("id", 3, "string", False),
                           ("parameters", 4, "map", True),
                           ("outputs", 5, "ModelInferResponse.InferOutputTensor", True),
                           ("raw_output_contents", 6, "bytes", True)],
    "ModelInferResponse.InferOutputTensor": [
        ("name", 1, "string", False), ("datatype", 2, "string", False),
        ("shape", 3, "int64", True), ("parameters", 4, "map", True),
        ("contents", 5, "InferTensorContents", False)],
}
_ONEOFS = {"InferParameter": "parameter_choice"}

#: The served methods: name -> (request message, response message).
METHODS: dict[str, tuple[str, str]] = {
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse"),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
}


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="kmeans/grpc_predict_v2.proto",
                                               package=PACKAGE, syntax="proto3")
    made: dict[str, descriptor_pb2.DescriptorProto] = {}
    for full in sorted(_MESSAGES, key=lambda n: n.count(".")):  # outer messages first
        outer, _, inner = full.rpartition(".")
        message = (made[outer].nested_type.add(name=inner) if outer
                   else proto.message_type.add(name=full))
        made[full] = message
        oneof = _ONEOFS.get(full)
        if oneof:
            message.oneof_decl.add(name=oneof)
        for name, number, kind, repeated in _MESSAGES[full]:
            field = message.field.add(name=name, number=number, json_name=_camel(name),
                                      label=_F.LABEL_REPEATED if repeated
                                      else _F.LABEL_OPTIONAL)
            if oneof:
                field.oneof_index = 0
            if kind in _SCALARS:
                field.type = _SCALARS[kind]
            elif kind == "map":
                field.type = _F.TYPE_MESSAGE
                field.type_name = f".{PACKAGE}.{full}.ParametersEntry"
                if not any(n.name == "ParametersEntry" for n in message.nested_type):
                    entry = message.nested_type.add(name="ParametersEntry")
                    entry.options.map_entry = True
                    entry.field.add(name="key", number=1, type=_F.TYPE_STRING,
                                    label=_F.LABEL_OPTIONAL, json_name="key")
                    entry.field.add(name="value", number=2, type=_F.TYPE_MESSAGE,
                                    type_name=f".{PACKAGE}.InferParameter",
                                    label=_F.LABEL_OPTIONAL, json_name="value")
            else:
                field.type = _F.TYPE_MESSAGE
                field.type_name = f".{PACKAGE}.{kind}"
    service = proto.service.add(name=SERVICE.rpartition(".")[2])
    for method, (request, response) in METHODS.items():
        service.method.add(name=method, input_type=f".{PACKAGE}.{request}",
                           output_type=f".{PACKAGE}.{response}")
    return proto


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


POOL = descriptor_pool.DescriptorPool()
FILE = POOL.Add(_file())


def message(name: str) -> Any:
    """The message class of ``name`` (``"ModelInferRequest"``, nested ones with a dot)."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


ServerLiveResponse = message("ServerLiveResponse")
ServerReadyResponse = message("ServerReadyResponse")
ModelReadyRequest = message("ModelReadyRequest")
ModelReadyResponse = message("ModelReadyResponse")
ServerMetadataResponse = message("ServerMetadataResponse")
ModelMetadataRequest = message("ModelMetadataRequest")
ModelMetadataResponse = message("ModelMetadataResponse")
ModelInferRequest = message("ModelInferRequest")
ModelInferResponse = message("ModelInferResponse")
