"""The served ``/openapi.json`` as client generators read it: a valid OpenAPI 3.0 document
(openapi-spec-validator), every array schema with its ``items`` (OpenAPI 3.0 requires them;
without them openapi-python-client drops the schema), and a client generated from it by
openapi-python-client whose infer call parses a real server's 200 into a typed response.

openapi-python-client 0.29.1 pins typer < 0.28, which the project's lock (typer 0.29.2) cannot
hold, so the generator runs as a tool in a virtualenv of its own (uv, from uv's cache after the
first time); the generated package needs only httpx and attrs and is imported here."""

import importlib
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from openapi_spec_validator import validate

from pipeline.core.settings import FEATURE_NAMES
from tests.helpers.serving import INFER, NAME, TOKEN

UV = Path(sys.executable).parent / "uv"
GENERATOR = "openapi-python-client==0.29.1"
PACKAGE = "kmeans_generated_client"


@pytest.fixture(scope="module")
def served(server) -> bytes:
    reply = httpx.get(f"{server}/openapi.json", timeout=10)
    assert reply.status_code == 200
    return reply.content


def _arrays_without_items(node, where="#") -> list[str]:
    """Every schema of type array that lacks ``items``, by its JSON pointer."""
    found = []
    if isinstance(node, dict):
        if node.get("type") == "array" and "items" not in node:
            found.append(where)
        for key, value in node.items():
            found += _arrays_without_items(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _arrays_without_items(value, f"{where}/{i}")
    return found


def test_the_served_document_is_valid_openapi_30_and_every_array_has_items(served):
    import json

    doc = json.loads(served)
    assert doc["openapi"].startswith("3.0.")
    validate(doc)  # raises, naming the first violation
    # The validator does not require items (the 3.0 meta-schema leaves them optional); the
    # specification does, and generators depend on it.
    assert _arrays_without_items(doc) == []
    # the missing-value convention is documented where the client reads the body's schema
    tensor = doc["components"]["schemas"]["FeaturesTensor"]["properties"]["data"]
    assert "NaN" in tensor["description"] and "Infinity" in tensor["description"]
    assert "NaN" in doc["info"]["description"]


@pytest.fixture(scope="module")
def generated(served, tmp_path_factory) -> Path:
    """A client package generated from the served document by the stock generator."""
    root = tmp_path_factory.mktemp("openapi-client")
    (root / "openapi.json").write_bytes(served)
    (root / "config.yaml").write_text("post_hooks: []\n")  # no ruff on PATH there
    tool = root / "generator"
    subprocess.run([str(UV), "venv", str(tool), "--python", sys.executable, "-q"], check=True,
                   timeout=120)
    subprocess.run([str(UV), "pip", "install", "-q", "--python", str(tool / "bin" / "python"),
                    GENERATOR], check=True, timeout=300)
    done = subprocess.run(
        [str(tool / "bin" / "openapi-python-client"), "generate", "--path",
         str(root / "openapi.json"), "--output-path", str(root / PACKAGE), "--meta", "none",
         "--config", str(root / "config.yaml")],
        capture_output=True, text=True, timeout=300, cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    # A schema the generator cannot read is skipped with a warning, and its call then
    # returns None on a 200: no warning at all
    assert "Warning" not in done.stdout + done.stderr, done.stdout + done.stderr
    return root


def test_a_generated_client_parses_infer_into_a_typed_response(generated, server, model,
                                                              monkeypatch):
    monkeypatch.syspath_prepend(str(generated))
    client_mod = importlib.import_module(PACKAGE)
    infer = importlib.import_module(f"{PACKAGE}.api.v2.post_v2_models_name_infer")
    models = importlib.import_module(f"{PACKAGE}.models")

    rng = np.random.default_rng(3)
    x = np.asarray(model.preprocessor.inverse_transform(rng.normal(0, 0.2, (5, 12))))
    x[1, 4] = np.nan
    body = models.InferRequest.from_dict({"inputs": [{
        "name": "features", "datatype": "FP64", "shape": [5, len(FEATURE_NAMES)],
        "data": [[None if v != v else v for v in row] for row in x.tolist()]}]})
    client = client_mod.AuthenticatedClient(base_url=server, token=TOKEN)
    with client:
        detailed = infer.sync_detailed(name=NAME, client=client, body=body)
    assert detailed.status_code == 200, detailed.content
    parsed = detailed.parsed
    assert isinstance(parsed, models.InferResponse), parsed
    assert parsed.model_name == NAME
    outputs = {o.name.value: o for o in parsed.outputs}
    assert isinstance(parsed.outputs[0], models.InferResponseOutputsItem)
    expected = model.assign(x)
    assert outputs["cluster"].data == expected.cluster.tolist()
    assert outputs["cluster"].shape == [5]
    np.testing.assert_allclose(outputs["distance"].data, expected.distance, rtol=1e-9)
    assert outputs["ood"].data == expected.ood.tolist()
    # A refusal parses into the typed error, with the server's message.
    refused = models.InferRequest.from_dict({"inputs": [{
        "name": "features", "datatype": "FP64", "shape": [1, len(FEATURE_NAMES)],
        "data": [[None] * len(FEATURE_NAMES)]}]})
    with client_mod.AuthenticatedClient(base_url=server, token=TOKEN) as again:
        error = infer.sync(name=NAME, client=again, body=refused)
    assert isinstance(error, models.Error)
    assert error.error.startswith("row 0: no feature value (all null)")
    assert httpx.post(f"{server}{INFER}", json=body.to_dict(), timeout=10,
                      headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
