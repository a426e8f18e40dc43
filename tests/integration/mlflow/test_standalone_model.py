"""The registered model stands alone: in a fresh virtualenv with only MLflow, NumPy and pandas
(this project not installed), ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` load
``models:/customer_segments@champion`` from the SQLite store and answer what the project's own
server answers for the same rows."""

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
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

# Runs inside the fresh virtualenv: load the champion, predict, report what it can import.
LOAD_AND_PREDICT = """
import importlib.util, json, sys
import mlflow
import pandas as pd

mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_registry_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
requests = json.load(open(sys.argv[3]))
answers = {name: model.predict(pd.DataFrame(**frame)).to_dict(orient="list")
           for name, frame in requests.items()}
print(json.dumps({"answers": answers,
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


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh virtualenv with the pinned MLflow, NumPy and pandas, and nothing of this
    project."""
    root = tmp_path_factory.mktemp("standalone-venv")
    pins = [f"{n}=={importlib.metadata.version(n)}" for n in ("mlflow", "numpy", "pandas")]
    subprocess.run([str(UV), "venv", str(root / "venv"), "--python", sys.executable, "-q"],
                   check=True, cwd=root, env=_clean_env(), timeout=120)
    python = root / "venv" / "bin" / "python"
    subprocess.run([str(UV), "pip", "install", "-q", "--python", str(python),
                    "-c", str(ROOT / "requirements.lock"), *pins],
                   check=True, cwd=root, env=_clean_env(), timeout=300)
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


def test_pyfunc_in_a_fresh_venv_answers_like_the_project_server(world, venv, requests,
                                                                project_answers, tmp_path):
    settings, _, _ = world
    payload = tmp_path / "requests.json"
    payload.write_text(json.dumps({name: json.loads(frame.to_json(orient="split",
                                                                  index=False))
                                   for name, frame in requests.items()}))
    done = subprocess.run([str(venv), "-c", LOAD_AND_PREDICT, settings.mlflow_tracking_uri, URI,
                           str(payload)], capture_output=True, text=True, cwd=tmp_path,
                          env=_clean_env(), timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["pipeline_importable"] is False, "the venv must not see this project"
    answers = result["answers"]
    _assert_same(answers["full"], project_answers["full"], "pyfunc vs server batch")
    _assert_same(answers["full"], project_answers["full_one_by_one"], "pyfunc vs one-row")
    _assert_same(answers["partial"], project_answers["partial"], "pyfunc vs v1 partial")


def test_mlflow_models_serve_in_a_fresh_venv_answers_like_the_project_server(
        world, venv, requests, project_answers, tmp_path):
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
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # its uvicorn child too
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()
