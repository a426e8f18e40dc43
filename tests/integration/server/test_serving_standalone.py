"""The server stands alone: one route table behind both the router and the OpenAPI document,
and an entry point (what the serving image runs) that needs none of the platform.

There is no Docker engine here, so the image cannot be built: the integration test at the end
is the check of what it runs. It starts the image's command (the same in the Dockerfile and the
InferenceService) in a subprocess where the packages the image does not install cannot be
imported, serves a model from a real SQLite MLflow registry, and asks the process which modules
it imported.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from pipeline.serving.__main__ import parser
from pipeline.serving.app import InferenceApp
from pipeline.serving.errors import ModelNotFound
from pipeline.serving.model import SegmentService
from pipeline.serving.openapi import GUARD_SCHEMES, document
from pipeline.serving.routes import ROUTES, Route, Router
from pipeline.serving.server import running
from tests.helpers.homes import make_settings
from tests.helpers.net import free_port, wait_ready
from tests.helpers.serving import register_tiny_model

ROOT = Path(__file__).resolve().parents[3]
NAME = "customer_segments"
SAMPLE = {"name": NAME, "version": "3"}  # a concrete value for each path parameter
# Not installed in the serving image (the `platform` extra only): the server must not need them.
PLATFORM_ONLY = ("airflow", "pyspark", "great_expectations", "evidently", "kubernetes", "typer")
# Installed in the image (MLflow depends on scikit-learn) but never imported by the server.
NEVER_IMPORTED = (*PLATFORM_ONLY, "sklearn")


def _concrete(template: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: SAMPLE[m.group(1)], template)


# ---- one route table ---------------------------------------------------------------------

def test_every_route_is_documented_with_its_methods_guard_and_errors():
    doc = document(NAME)
    assert list(doc["paths"]) == [r.path for r in ROUTES]
    for route in ROUTES:
        item = doc["paths"][route.path]
        assert {k for k in item if k != "parameters"} == {m.lower() for m in route.methods}
        assert [p["name"] for p in item.get("parameters", [])] == list(route.params)
        for method in route.methods:
            op = item[method.lower()]
            assert op["tags"] == [route.tag] and op["summary"] == route.summary
            expected = [{GUARD_SCHEMES[route.guard]: []}] if route.guard else None
            assert op.get("security") == expected, route.path
            assert sorted(op["responses"]) == sorted(
                ["200", *map(str, route.error_statuses)]), route.path
            ok = op["responses"]["200"]["content"]
            assert ok == {route.media_type: {"schema": {
                "$ref": f"#/components/schemas/{route.response}"}}}
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            assert body == ({"schema": {"$ref": f"#/components/schemas/{route.request}"}}
                            if route.request else None)
    # Every schema the table names exists; the error statuses follow the route's shape.
    by_path = {r.path: r for r in ROUTES}
    assert by_path["/v2/models/{name}/infer"].error_statuses == (400, 401, 403, 404, 408, 413,
                                                                  415, 503)
    assert by_path["/v2/health/live"].error_statuses == ()
    assert by_path["/"].error_statuses == ()
    assert by_path["/admin/load"].error_statuses == (400, 401, 403, 404, 408, 409, 413, 415,
                                                     422, 503)


def test_every_documented_path_resolves_to_its_route_in_the_app():
    app = InferenceApp(SegmentService(NAME))
    by_path = {r.path: r for r in ROUTES}
    for template in document(NAME)["paths"]:
        route = by_path[template]
        for path in (_concrete(template), _concrete(template) + "/"):
            endpoint, params = app.router.resolve(path)
            assert endpoint.name == route.name, path
            assert endpoint.handler == app.handlers[route.handler]
            assert (endpoint.methods, endpoint.guard) == (route.methods, route.guard)
            assert params == {p: SAMPLE[p] for p in route.params}, path
    # Probes and metrics answer under load; everything else counts toward the limit.
    unlimited = {r.name for r in ROUTES if not r.limited}
    assert unlimited == {"live", "live_v1", "ready", "metrics"}


@pytest.mark.parametrize("path, message", [
    ("/v1/models/m:explain", "verb 'explain' is not supported; use /v1/models/m:predict"),
    ("/v1/models/a:b:predict", "verb 'b:predict' is not supported; use /v1/models/a:predict"),
    ("/v2/nothing/here", "no route '/v2/nothing/here'; see /openapi.json"),
    ("/v2/models/m/versions", "no route '/v2/models/m/versions'"),
    ("/v2/models/m/versions/3/explain", "no route"),
    ("/v3", "no route '/v3'"),
    ("/v1", "no route '/v1'"),
])
def test_unknown_paths_and_verbs_are_404_naming_the_way(path, message):
    router = Router(ROUTES, lambda r: r)
    with pytest.raises(ModelNotFound, match=re.escape(message)):
        router.resolve(path)


def test_odd_segments_route_as_before():
    router = Router(ROUTES, lambda r: r)
    # a model named "versions", a version named "ready"; an empty name reaches the handler,
    # which answers that the model is unknown
    route, params = router.resolve("/v2/models/versions/versions/ready")
    assert route.name == "model_metadata" and params == {"name": "versions", "version": "ready"}
    route, params = router.resolve("/v2/models//infer")
    assert route.name == "infer" and params == {"name": ""}
    route, params = router.resolve(f"/v1/models/{NAME}")
    assert route.name == "model_ready_v1" and params == {"name": NAME}


def test_the_router_remembers_a_bounded_number_of_paths():
    router = Router(ROUTES, lambda r: r)
    router.SEEN_MAX = 8
    for i in range(50):
        route, params = router.resolve(f"/v2/models/m{i}/infer")
        assert route.name == "infer" and params == {"name": f"m{i}"}
        assert len(router._seen) <= 8
    again, params = router.resolve("/v2/models/m3/infer")  # forgotten, found again
    assert again.name == "infer" and params == {"name": "m3"}
    long = "/v2/models/" + "x" * 300 + "/infer"
    assert router.resolve(long)[0].name == "infer" and long not in router._seen


@pytest.mark.parametrize("routes, message", [
    ([Route(path="/a", name="a", handler="h", summary="s", response="Live")] * 2,
     "route '/a' is declared twice"),
    ([Route(path="/a/{name}:go", name="a", handler="h", summary="s", response="Live")] * 2,
     "route '/a/{name}:go' is declared twice"),
    ([Route(path="/a:go/{name}", name="a", handler="h", summary="s", response="Live")],
     "a ':verb' may only follow a parameter in the last segment"),
    ([Route(path="/a/x{name}", name="a", handler="h", summary="s", response="Live")],
     "segment 'x{name}' must be a literal or one whole {parameter}"),
])
def test_a_bad_table_is_refused_when_the_router_is_built(routes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Router(routes, lambda r: r)


def test_a_bad_route_is_refused_when_declared():
    with pytest.raises(ValueError, match=re.escape("methods ['PUT']; allowed: a non-empty "
                                                   "subset of ['GET', 'POST']")):
        Route(path="/a", name="a", handler="h", summary="s", response="Live", methods=("PUT",))
    with pytest.raises(ValueError, match=re.escape("path parameters ['model']; declared: "
                                                   "['name', 'version']")):
        document(NAME, [Route(path="/a/{model}", name="a", handler="h", summary="s",
                              response="Live")])
    with pytest.raises(ValueError, match=re.escape("schema 'Nope' is not among the components")):
        document(NAME, [Route(path="/a", name="a", handler="h", summary="s", response="Nope")])


def test_the_document_is_built_once_and_served_as_the_same_bytes():
    app = InferenceApp(SegmentService(NAME))
    with running(app) as url:
        first = httpx.get(f"{url}/openapi.json")
        second = httpx.get(f"{url}/openapi.json")
    assert first.status_code == 200 and first.headers["content-type"] == "application/json"
    assert first.content == second.content == app._openapi
    assert first.json() == document(NAME)


# ---- the entry point and what the image runs ---------------------------------------------

def _image_command() -> list[str]:
    """The serving image's command, checked to be the InferenceService container's too."""
    dockerfile = (ROOT / "docker" / "serving.Dockerfile").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    manifest = yaml.safe_load((ROOT / "k8s" / "base" / "predictor" /
                               "inferenceservice.yaml").read_text())
    container = manifest["spec"]["predictor"]["containers"][0]
    assert container["command"] + container["args"] == entrypoint + cmd
    return entrypoint + cmd


def _entry_point(script: str) -> tuple[str, str]:
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"][script]
    module, _, function = target.partition(":")
    return module, function


def test_image_and_manifest_run_the_servers_own_entry_point():
    command = _image_command()
    assert command[0] == "kmeans-serve"
    assert _entry_point("kmeans-serve") == ("pipeline.serving.__main__", "main")
    dockerfile = (ROOT / "docker" / "serving.Dockerfile").read_text()
    # the serving extra's dependencies (docker/project_deps.py), then the package without them
    assert "python project_deps.py serving > requirements.txt" in dockerfile
    assert "pip install --no-deps ." in dockerfile
    # The serving extra (and the core) name none of the platform's packages.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    light = project["dependencies"] + project["optional-dependencies"]["serving"]
    names = {re.split(r"[\[=<>]", req)[0].lower() for req in light}
    assert not names & {"apache-airflow", "pyspark", "great-expectations", "evidently",
                        "scikit-learn", "kubernetes", "typer"}, names
    assert {"mlflow", "feast", "uvicorn", "orjson"} <= names
    assert "kmeans-platform[serving]" in project["optional-dependencies"]["platform"]


def test_entry_point_takes_the_options_of_kmeans_serve_and_names_bad_values(capsys):
    # The platform's CLI, imported here only: the rest of this module needs none of it.
    from typer.main import get_command

    from pipeline.cli import app

    ours = {o for action in parser()._actions for o in action.option_strings}
    theirs = {o for p in get_command(app).commands["serve"].params for o in p.opts}
    assert theirs <= ours, theirs - ours
    args = parser().parse_args(["--canary-alias", "", "--canary-weight", "10", "--port", "0",
                                "--no-feast", "--version", "4"])
    assert (args.canary_alias, args.canary_weight, args.port, args.feast, args.version) == (
        "", 10.0, 0, False, "4")
    for argv, message in ((["--canary-weight", "150"], "150 is outside the allowed range 0 to "
                                                       "100"),
                          (["--canary-mode", "half"], "invalid choice: 'half'"),
                          (["--port", "http"], "'http' is not an integer; allowed: 0 to 65535")):
        with pytest.raises(SystemExit) as exit_:
            parser().parse_args(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err, argv


def test_entry_point_names_a_missing_model_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pipeline.serving", "--no-feast"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KMEANS_HOME": str(tmp_path / "home")})
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last == (f"error: model {NAME!r} has no alias 'champion'; run the training DAG or "
                    "`kmeans train` first")


# ---- the image's command, run --------------------------------------------------------------

WRAPPER = textwrap.dedent('''
    import atexit, importlib.abc, json, sys

    ABSENT, REPORT = {absent!r}, {report!r}
    attempts = []


    class NotInTheImage(importlib.abc.MetaPathFinder):
        """Makes the packages the serving image does not install fail to import, as there;
        remembers who tried."""

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] not in ABSENT:
                return None
            frame = sys._getframe(1)
            while frame is not None and frame.f_globals.get("__name__", "").startswith(
                    ("importlib", "_frozen_importlib")):
                frame = frame.f_back
            attempts.append([name, frame.f_globals.get("__name__") if frame else None])
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)


    def report():
        with open(REPORT, "w") as f:
            json.dump({{"modules": sorted(m for m, v in sys.modules.items() if v is not None),
                       "attempts": attempts}}, f)


    sys.meta_path.insert(0, NotInTheImage())
    atexit.register(report)
    from {module} import {function}
    sys.exit({function}({argv!r}))
''')



def test_the_images_command_serves_a_registered_model_without_the_platform(tmp_path):
    settings = make_settings(tmp_path / "home")
    model = register_tiny_model(settings, tmp_path / "artifact")
    port = free_port()
    argv = _image_command()[1:]
    argv[argv.index("--host") + 1] = "127.0.0.1"
    argv[argv.index("--port") + 1] = str(port)
    argv.append("--no-feast")  # no feature store in this home: lookups by id answer 503
    module, function = _entry_point(_image_command()[0])
    report = tmp_path / "modules.json"
    code = WRAPPER.format(absent=PLATFORM_ONLY, report=str(report), module=module,
                          function=function, argv=argv)
    env = {**os.environ, "KMEANS_HOME": str(settings.home),
           "KMEANS_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri}
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "stdout", "wb") as out, open(tmp_path / "stderr", "wb") as err:
        server = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=out,
                                  stderr=err)
        try:
            wait_ready(server, url, tmp_path / "stderr", tail=4000)
            rows = np.asarray(model.preprocessor.means)[None, :] + np.eye(12)[:3]
            reply = httpx.post(f"{url}/v2/models/{NAME}/infer", timeout=10, json={
                "id": "standalone", "inputs": [{"name": "features", "datatype": "FP64",
                                                "shape": [3, 12], "data": rows.tolist()}]})
            by_id = httpx.post(f"{url}/v2/models/{NAME}/infer", timeout=10, json={
                "inputs": [{"name": "customer_id", "datatype": "INT64", "shape": [1],
                            "data": [7]}]})
            served_doc = httpx.get(f"{url}/openapi.json", timeout=10).json()
        finally:
            server.send_signal(signal.SIGINT)
            returncode = server.wait(timeout=60)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    out = {o["name"]: o["data"] for o in answer["outputs"]}
    expected = model.assign(rows)
    assert answer["model_version"] == "1" and answer["id"] == "standalone"
    assert out["cluster"] == expected.cluster.tolist()
    assert np.allclose(out["distance"], expected.distance)
    assert by_id.status_code == 503
    assert by_id.json() == {"error": "no Feast online store is configured for lookups by "
                                     "customer_id"}
    assert served_doc == document(NAME)
    # Standard output is the access log.
    log = [json.loads(line) for line in (tmp_path / "stdout").read_text().splitlines()]
    assert [(x["route"], x["status"]) for x in log[-3:]] == [("infer", 200), ("infer", 503),
                                                              ("openapi", 200)]
    # What the process imported: the registry and the server, none of the platform.
    assert returncode == 0, (tmp_path / "stderr").read_text()[-4000:]
    found = json.loads(report.read_text())
    modules = set(found["modules"])
    assert {"mlflow", "uvicorn", "pipeline.serving.app", "pipeline.registry"} <= modules
    imported = sorted(m for m in modules if m.partition(".")[0] in NEVER_IMPORTED)
    assert imported == [], imported
    platform_layers = sorted(m for m in modules if m.startswith((
        "pipeline.engine", "pipeline.training", "pipeline.promotion", "pipeline.rollout",
        "pipeline.orchestration", "pipeline.cli", "pipeline.demo")))
    assert platform_layers == [], platform_layers
    # Only third-party optional probes asked for a platform package, and went on without it
    # (MLflow's `try: import pyspark` for Spark types in signatures).
    ours = [a for a in found["attempts"] if (a[1] or "").startswith(("pipeline", "__main__"))]
    assert ours == [], ours
    assert {name.partition(".")[0] for name, _ in found["attempts"]} <= {"pyspark"}, found
