"""The registered model stands alone: in a fresh virtualenv with only MLflow, NumPy and pandas
(this project not installed), ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` load
``models:/customer_segments@champion`` from the SQLite store and answer what the project's own
server answers for the same rows, its own input example included; and refuse what the server
refuses (a row without any value, a value out of range) with the server's message.

Two virtualenvs: the pinned MLflow, NumPy and pandas (the model's requirements), and the newest
ones the registry offers (resolved by uv without the lock, as a plain ``pip install mlflow``
would: pandas 3 among them). Both come from uv's cache once it holds the wheels."""

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from pipeline import registry
from pipeline.core.settings import FEATURE_NAMES, FEATURES
from pipeline.model.artifact import SegmentModel
from pipeline.model.preprocessing import LOG_FEATURES, Preprocessor
from pipeline.serving.server import build_app, running
from tests.helpers.homes import make_settings
from tests.helpers.net import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[3]
UV = Path(sys.executable).parent / "uv"
OUTPUTS = ["cluster", "distance", "runner_up", "margin", "ood"]
URI = "models:/customer_segments@champion"
DROPPED = "tenure_days"  # left out of the "partial" request: missing in every row

# Runs inside the fresh virtualenv: load the champion, predict (the requests, the model's own
# input example), try the rows it must refuse, report versions and what it can import.
LOAD_AND_PREDICT = """
import importlib.metadata, importlib.util, json, sys
import mlflow
import pandas as pd
from mlflow.models import Model

mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_registry_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
requests = json.load(open(sys.argv[3]))
answers = {name: model.predict(pd.DataFrame(**frame)).to_dict(orient="list")
           for name, frame in requests["good"].items()}
local = mlflow.artifacts.download_artifacts(sys.argv[2])
example = Model.load(local).load_input_example(local)
answers["input_example"] = model.predict(example).to_dict(orient="list")
refused = {}
for name, frame in requests["bad"].items():
    try:
        model.predict(pd.DataFrame(**frame))
        refused[name] = None
    except Exception as err:
        refused[name] = {"type": type(err).__name__, "message": getattr(err, "message", str(err)),
                         "error_code": getattr(err, "error_code", None)}
print(json.dumps({"answers": answers, "refused": refused,
                  "versions": {n: importlib.metadata.version(n)
                               for n in ("mlflow", "numpy", "pandas")},
                  "pipeline_importable": importlib.util.find_spec("pipeline") is not None}))
"""



def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would put this project on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model (fitted preprocessing, 4 centroids, matched ids) registered through the
    registry, so it is the champion of a fresh SQLite store."""
    import mlflow

    home = tmp_path_factory.mktemp("standalone-home")
    settings = make_settings(home)
    rng = np.random.default_rng(4)
    raw = rng.lognormal(2, 1, (300, len(FEATURE_NAMES)))
    for j, name in enumerate(FEATURE_NAMES):  # within each feature's valid range, as served
        spec = FEATURES[name]
        raw[:, j] = (rng.beta(2, 5, len(raw)) if spec["max"] <= 1
                     else np.minimum(raw[:, j], spec["max"]))
    raw[rng.random(raw.shape) < 0.05] = np.nan
    pre = Preprocessor.fit(pd.DataFrame(raw, columns=FEATURE_NAMES), FEATURE_NAMES,
                           log_features=LOG_FEATURES)
    x = pre.transform(raw)
    centroids = x[rng.choice(len(x), 4, replace=False)]
    model = SegmentModel(centroids, pre, {"cluster_ids": [3, 1, 0, 2], "distance_p99": 4.0})
    with mlflow.start_run(experiment_id=registry.configure(settings)) as run:
        pass
    version = registry.log_model_version(settings, run.info.run_id,
                                         model.save(home / "artifact"), {"k": 4})
    assert registry.register_challenger(settings, version, reason="standalone test",
                                        actor="test") == ["challenger", "champion"]
    return settings, model, raw


@pytest.fixture(scope="module", params=["pinned", "newest"])
def venv(request, tmp_path_factory):
    """A fresh virtualenv with MLflow, NumPy and pandas, and nothing of this project: the pinned
    versions (constrained by the lock), or the newest the registry offers (no constraint, as a
    plain ``pip install mlflow pandas numpy`` resolves them). Both share uv's cache."""
    root = tmp_path_factory.mktemp(f"standalone-venv-{request.param}")
    if request.param == "pinned":
        wanted = ["-c", str(ROOT / "requirements.lock"),
                  *[f"{n}=={importlib.metadata.version(n)}" for n in ("mlflow", "numpy",
                                                                       "pandas")]]
    else:
        wanted = ["mlflow", "pandas", "numpy"]
    started = time.monotonic()
    subprocess.run([str(UV), "venv", str(root / "venv"), "--python", sys.executable, "-q"],
                   check=True, cwd=root, env=_clean_env(), timeout=120)
    python = root / "venv" / "bin" / "python"
    subprocess.run([str(UV), "pip", "install", "-q", "--python", str(python), *wanted],
                   check=True, cwd=root, env=_clean_env(), timeout=300)
    print(f"\n{request.param} venv built in {time.monotonic() - started:.1f} s")
    return python


@pytest.fixture(scope="module")
def requests(world):
    """Rows to score: customers from the training distribution, some with missing values, a
    row of zeros, a row with negatives, and a request that leaves one feature out."""
    _, _, raw = world
    rows = raw[:12].copy()
    rows[0] = 0.0
    rows[1, :4] = -5.0
    rows[2, 3] = rows[3, 7] = np.nan
    full = pd.DataFrame(rows, columns=FEATURE_NAMES)
    partial = full.drop(columns=[DROPPED])
    return {"full": full, "partial": partial}


SHARE = FEATURE_NAMES.index("discount_share")


@pytest.fixture(scope="module")
def bad_requests(world):
    """Batches the server refuses: a row without any value, a value far outside its feature's
    range, one beyond float32, and an infinite one; each among valid rows."""
    _, _, raw = world
    out = {}
    for name, (row, value) in {"all_null": (1, None), "out_of_range": (2, 50.0),
                               "beyond_float32": (0, 1e39), "infinite": (3, np.inf)}.items():
        rows = np.nan_to_num(raw[:4].copy(), nan=0.5)
        if value is None:
            rows[row] = np.nan
        else:
            rows[row, SHARE] = value
        out[name] = pd.DataFrame(rows, columns=FEATURE_NAMES)
    return out


@pytest.fixture(scope="module")
def server_refusals(world, bad_requests):
    """The project server's 400 message for each of the bad batches (v2, JSON; infinity
    through the binary tensor extension, which JSON cannot carry)."""
    settings, _, _ = world
    out = {}
    with running(build_app(settings, with_feast=False, canary_alias=None)) as url, \
            httpx.Client(base_url=url, timeout=30) as http:
        for name, frame in bad_requests.items():
            rows = frame.to_numpy()
            infer = f"/v2/models/{settings.model_name}/infer"
            if np.isinf(rows).any():
                header = json.dumps({"inputs": [{
                    "name": "features", "datatype": "FP64", "shape": list(rows.shape),
                    "parameters": {"binary_data_size": rows.nbytes}}]}).encode()
                reply = http.post(infer, content=header + rows.astype("<f8").tobytes(),
                                  headers={"inference-header-content-length": str(len(header)),
                                           "content-type": "application/octet-stream"})
            else:
                data = [[None if np.isnan(v) else float(v) for v in row] for row in rows]
                reply = http.post(infer, json={"inputs": [{
                    "name": "features", "datatype": "FP64", "shape": list(rows.shape),
                    "data": data}]})
            assert reply.status_code == 400, (name, reply.text)
            out[name] = reply.json()["error"]
    return out


@pytest.fixture(scope="module")
def project_answers(world, requests):
    """What the project's own inference server answers: v2 with the feature matrix (null for
    missing), v1 with named features (an absent name is missing), row by row (the compiled
    one-row path) and as one batch."""
    settings, _, _ = world
    out = {}
    with running(build_app(settings, with_feast=False, canary_alias=None)) as url, \
            httpx.Client(base_url=url, timeout=30) as http:
        full = requests["full"]
        data = [[None if np.isnan(v) else float(v) for v in row]
                for row in full.to_numpy()]
        batch = http.post(f"/v2/models/{settings.model_name}/infer", json={"inputs": [{
            "name": "features", "datatype": "FP64", "shape": [len(data), len(FEATURE_NAMES)],
            "data": data}]})
        assert batch.status_code == 200, batch.text
        out["full"] = {o["name"]: o["data"] for o in batch.json()["outputs"]}
        one_by_one = []
        for row in data:
            reply = http.post(f"/v2/models/{settings.model_name}/infer", json={"inputs": [{
                "name": "features", "datatype": "FP64", "shape": [1, len(row)], "data": row}]})
            assert reply.status_code == 200, reply.text
            one_by_one.append({o["name"]: o["data"][0] for o in reply.json()["outputs"]})
        out["full_one_by_one"] = {k: [r[k] for r in one_by_one] for k in OUTPUTS}
        instances = [{k: v for k, v in row.items() if v == v}  # NaN: leave the name out
                     for row in requests["partial"].to_dict(orient="records")]
        v1 = http.post(f"/v1/models/{settings.model_name}:predict",
                       json={"instances": instances})
        assert v1.status_code == 200, v1.text
        out["partial"] = {k: [p[k] for p in v1.json()["predictions"]] for k in OUTPUTS}
    return out


def _assert_same(answer: dict, expected: dict, label: str) -> float:
    """Same clusters, runner-ups and ood flags; distances and margins within 1e-5. Returns the
    largest distance difference seen."""
    for name in ("cluster", "runner_up", "ood"):
        assert list(answer[name]) == list(expected[name]), f"{label}: {name} differs"
    for name in ("distance", "margin"):
        np.testing.assert_allclose(answer[name], expected[name], rtol=1e-5, atol=1e-6,
                                   err_msg=f"{label}: {name} differs")
    return float(np.max(np.abs(np.subtract(answer["distance"], expected["distance"]))))


def test_the_logged_model_records_what_it_needs(world):
    """Signature (optional double features; typed outputs), input example, pinned
    requirements, the standalone module beside the model code, and no pickle."""
    import mlflow

    settings, model, _ = world
    registry.configure(settings)
    info = mlflow.models.get_model_info(URI)
    inputs = info.signature.inputs.to_dict()
    assert [c["name"] for c in inputs] == FEATURE_NAMES
    assert {(c["type"], c["required"]) for c in inputs} == {("double", False)}
    assert [(c["name"], c["type"]) for c in info.signature.outputs.to_dict()] == [
        ("cluster", "long"), ("distance", "double"), ("runner_up", "long"),
        ("margin", "double"), ("ood", "boolean")]
    local = Path(mlflow.artifacts.download_artifacts(URI))
    assert (local / "requirements.txt").read_text().split() == [
        f"{n}=={importlib.metadata.version(n)}" for n in ("mlflow", "numpy", "pandas")]
    assert (local / "code" / "kmeans_segments.py").read_bytes() == (
        ROOT / "pipeline" / "model" / "kmeans_segments.py").read_bytes()
    example = json.loads((local / "input_example.json").read_text())
    assert example["columns"] == FEATURE_NAMES and len(example["data"]) == 3
    # the example rows sit on the first centroids: a reader sees what a customer looks like
    assigned = model.assign(np.asarray(example["data"], dtype=np.float64))
    assert assigned.cluster.tolist() == model.cluster_ids[:3].tolist()
    assert not [p for p in local.rglob("*") if p.suffix in (".pkl", ".pickle", ".cloudpickle")]


def _split(frame: pd.DataFrame) -> dict:
    """A frame as pandas' split orient (NaN and infinity as JSON null and bare tokens)."""
    return {"columns": list(frame.columns), "data": frame.to_numpy().tolist()}


def test_pyfunc_in_a_fresh_venv_answers_like_the_project_server(world, venv, requests,
                                                                project_answers, bad_requests,
                                                                server_refusals, tmp_path):
    settings, model, _ = world
    payload = tmp_path / "requests.json"
    payload.write_text(json.dumps({  # Python's json writes NaN and Infinity bare
        "good": {name: _split(frame) for name, frame in requests.items()},
        "bad": {name: _split(frame) for name, frame in bad_requests.items()}}))
    done = subprocess.run([str(venv), "-c", LOAD_AND_PREDICT, settings.mlflow_tracking_uri, URI,
                           str(payload)], capture_output=True, text=True, cwd=tmp_path,
                          env=_clean_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\n{venv.parent.parent.name}: {result['versions']}")
    assert result["pipeline_importable"] is False, "the venv must not see this project"
    if "newest" in str(venv):  # the unconstrained resolution is at least as new as the pins
        for name, version in result["versions"].items():
            ours = importlib.metadata.version(name)
            assert tuple(map(int, version.split(".")[:2])) >= \
                tuple(map(int, ours.split(".")[:2])), (name, version, ours)
    answers = result["answers"]
    _assert_same(answers["full"], project_answers["full"], "pyfunc vs server batch")
    _assert_same(answers["full"], project_answers["full_one_by_one"], "pyfunc vs one-row")
    _assert_same(answers["partial"], project_answers["partial"], "pyfunc vs v1 partial")
    # the model's own input example: its rows sit on the first centroids
    assert answers["input_example"]["cluster"] == model.cluster_ids[:3].tolist()
    # what the server refuses, the model refuses, with the server's message
    for name, message in server_refusals.items():
        refusal = result["refused"][name]
        assert refusal is not None, f"the model scored the {name} batch the server refuses"
        assert refusal["type"] == "MlflowException", refusal
        assert refusal["error_code"] == "INVALID_PARAMETER_VALUE", refusal
        assert refusal["message"] == message, (name, refusal["message"], message)
    assert server_refusals["all_null"].startswith("row 1: no feature value (all null)")
    assert server_refusals["out_of_range"] == (
        "row 2: feature discount_share: 50 is outside the accepted range [-10, 11] (valid range "
        "[0, 1] widened by 10 times its width (KMEANS_RANGE_TOLERANCE))")
    assert server_refusals["infinite"].startswith(
        "row 3: feature discount_share: inf is not a finite number (accepted range [-10, 11])")


def test_mlflow_models_serve_in_a_fresh_venv_answers_like_the_project_server(
        world, venv, requests, project_answers, bad_requests, server_refusals, tmp_path):
    settings, _, _ = world
    port = free_port()
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [str(venv.parent / "mlflow"), "models", "serve", "-m", URI, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # PATH as an activated venv has it: mlflow execs the venv's uvicorn by name
        env=_clean_env(MLFLOW_TRACKING_URI=settings.mlflow_tracking_uri,
                       MLFLOW_REGISTRY_URI=settings.mlflow_tracking_uri,
                       PATH=f"{venv.parent}{os.pathsep}{os.environ.get('PATH', '')}"))
    try:
        base = f"http://127.0.0.1:{port}"
        # until /ping answers; an exit fails at once with the log's tail
        wait_ready(server, base, tmp_path / "serve.log", timeout=60, tail=4000, path="/ping")
        for name, frame in requests.items():
            split = json.loads(frame.to_json(orient="split", index=False))
            reply = httpx.post(f"{base}/invocations", json={"dataframe_split": split},
                               timeout=30)
            assert reply.status_code == 200, reply.text
            rows = reply.json()["predictions"]
            answer = {k: [r[k] for r in rows] for k in OUTPUTS}
            _assert_same(answer, project_answers[name], f"mlflow serve vs server ({name})")
        bad = httpx.post(f"{base}/invocations", json={"dataframe_split": {
            "columns": FEATURE_NAMES, "data": [["a"] * len(FEATURE_NAMES)]}}, timeout=30)
        assert bad.status_code == 400, "the signature refuses text where a double belongs"
        # rows the server refuses get a 400 here too, ending with the server's message (MLflow's
        # scoring server puts "Failed to predict data '<the frame>'. Error: " before it)
        for name in ("all_null", "out_of_range", "beyond_float32"):
            refused = httpx.post(f"{base}/invocations", timeout=30, json={
                "dataframe_split": json.loads(bad_requests[name].to_json(orient="split",
                                                                         index=False))})
            assert refused.status_code == 400, (name, refused.text)
            assert refused.json()["error_code"] == "INVALID_PARAMETER_VALUE", refused.text
            assert refused.json()["message"].endswith(f"Error: {server_refusals[name]}"), \
                refused.text
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # its uvicorn child too
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()
