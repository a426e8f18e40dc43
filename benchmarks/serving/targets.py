"""Serving targets of the benchmark: one HTTP server each, on 127.0.0.1:PORT, pinned to CPU 0.

    bare      minimal Starlette + uvicorn route doing NumPy nearest centroid    (.venv)
    ours      the platform's server, pipeline.serving.app.InferenceApp         (.venv)
    mlserver  MLServer 1.7.1 + mlserver-sklearn, a scikit-learn KMeans          (own venv)
    kserve    KServe 0.21.0 ModelServer, a kserve.Model doing NumPy             (own venv)

Every target answers ``POST /v2/models/segments/infer`` (Open Inference Protocol v2) for the
same centroids. ``start()`` runs one as a subprocess and waits until that route answers 200.
The module is also the servers' entry point, run by each target's own interpreter, so its
top level imports only the standard library:

    python targets.py serve NAME --port P --centroids C.npy [--token T]
    python targets.py write-sklearn --centroids C.npy --out model.joblib
    python targets.py versions NAME
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]
VENVS = ROOT / ".kmeans" / "bench-venvs"
MODEL_NAME = "segments"
INFER_PATH = f"/v2/models/{MODEL_NAME}/infer"
SERVER_CPUS = "0"
READY_TIMEOUT_S = 180


@dataclass(frozen=True)
class Target:
    name: str
    venv: str | None  # None: the project's .venv; else a folder under .kmeans/bench-venvs
    packages: tuple[str, ...]  # what its own venv installs; reported versions otherwise
    report: tuple[str, ...]  # distributions whose versions go into the results
    by_customer_id: bool = False  # serves v2 requests by customer_id (needs an online store)

    @property
    def python(self) -> Path:
        return (ROOT / ".venv" if self.venv is None else VENVS / self.venv) / "bin" / "python"


_WEB = ("starlette", "uvicorn", "uvloop", "httptools", "numpy")
TARGETS = {
    "bare": Target("bare", None, (), _WEB),
    "ours": Target("ours", None, (), ("kmeans-platform", "orjson", *_WEB), by_customer_id=True),
    "mlserver": Target("mlserver", "mlserver", ("mlserver==1.7.1", "mlserver-sklearn==1.7.1"),
                       ("mlserver", "mlserver-sklearn", "scikit-learn", "fastapi", *_WEB)),
    "kserve": Target("kserve", "kserve", ("kserve==0.21.0", "numpy"),
                     ("kserve", "fastapi", *_WEB)),
}


def ensure_venv(target: Target) -> None:
    """Create the target's own virtualenv once (python3.11 -m venv, then pip install)."""
    if target.venv is None:
        return
    folder = VENVS / target.venv
    stamp = folder / ".installed"
    if stamp.exists() and stamp.read_text() == " ".join(target.packages):
        return
    subprocess.run(["python3.11", "-m", "venv", str(folder)], check=True)
    subprocess.run([str(target.python), "-m", "pip", "install", "--quiet",
                    "--disable-pip-version-check", *target.packages], check=True)
    stamp.write_text(" ".join(target.packages))


def versions(target: Target) -> dict:
    out = subprocess.run([str(target.python), str(HERE), "versions", target.name],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def server_env() -> dict:
    """One core per server: single-threaded BLAS/OpenMP. This machine's OpenBLAS overrides
    (OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE) are dropped as in bench_engine.py."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def cpu_seconds(proc: subprocess.Popen) -> float:
    """User + system CPU time so far of every process in a server's process group."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == proc.pid:  # pgrp; start() makes the server a group leader
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _post(port: int, body: bytes, headers: dict) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{INFER_PATH}", data=body,
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


@contextlib.contextmanager
def start(name: str, port: int, workdir: Path, centroids: Path, token: str,
          probe_body: bytes, env: dict | None = None):
    """Run target ``name`` on 127.0.0.1:``port`` pinned to SERVER_CPUS, with ``env`` added to
    its environment; yields the Popen once ``probe_body`` POSTed to the infer route answers
    200. Stops the server on exit."""
    target = TARGETS[name]
    ensure_venv(target)
    workdir, centroids = workdir.resolve(), centroids.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if name == "mlserver":
        cmd = [str(target.python.parent / "mlserver"), "start",
               str(_mlserver_repo(target, workdir / "mlserver", port, centroids))]
    else:
        cmd = [str(target.python), str(HERE), "serve", name, "--port", str(port),
               "--centroids", str(centroids), "--token", token]
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["taskset", "-c", SERVER_CPUS, *cmd], stdout=log,
                                stderr=subprocess.STDOUT, cwd=workdir,
                                env={**server_env(), **(env or {})}, start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        headers = {"Authorization": f"Bearer {token}"}
        while (status := _post(port, probe_body, headers)) != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"target {name} not ready (last status {status}, exit code "
                                   f"{proc.poll()}); log {log_path}:\n{tail}")
            time.sleep(0.25)
        yield proc
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _mlserver_repo(target: Target, folder: Path, port: int, centroids: Path) -> Path:
    """Model repository: settings.json (one process, no metrics server, gRPC on port+1, no
    access log) and segments/ with model-settings.json and the KMeans as model.joblib."""
    model_dir = folder / MODEL_NAME
    model_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(target.python), str(HERE), "write-sklearn", "--centroids",
                    str(centroids), "--out", str(model_dir / "model.joblib")],
                   check=True, env=server_env())
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": MODEL_NAME, "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "1"}}, indent=2))
    (folder / "settings.json").write_text(json.dumps({
        "debug": False, "host": "127.0.0.1", "http_port": port, "grpc_port": port + 1,
        "metrics_endpoint": None, "parallel_workers": 0}, indent=2))
    return folder


async def drive_asgi(app, bodies: list[bytes], n: int, token: str) -> float:
    """Seconds per request over ``n`` one-after-another v2 infers of ``bodies`` (in turn)
    through the ASGI ``app`` itself, no sockets: what the app costs a request. A non-200 answer
    is an error (the figure would be that of a refusal)."""
    scope = {"type": "http", "method": "POST", "path": INFER_PATH, "query_string": b"",
             "headers": [(b"content-type", b"application/json"),
                         (b"authorization", f"Bearer {token}".encode())]}
    status: set[int] = set()

    async def send(message):
        if message["type"] == "http.response.start":
            status.add(message["status"])

    start = time.perf_counter()
    for i in range(n):
        body = bodies[i % len(bodies)]

        async def receive(body=body):
            return {"type": "http.request", "body": body, "more_body": False}

        await app(scope, receive, send)
    if status != {200}:
        raise RuntimeError(f"the app answered {sorted(status)}")
    return (time.perf_counter() - start) / n


# ------------------------------------------------------------------ run inside a target's venv

def build_ours(centroids, token: str, *, with_feast: bool = True, access_log=None):
    """The platform's ASGI app as it runs in production: prediction token, admin token,
    Prometheus metrics, JSON access log on stdout, and a canary (the centroids moved a little)
    answering 10% of keys. ``centroids`` (k x 12) are in model space: the preprocessing is the
    identity. With KMEANS_HOME pointing at a home whose Feast online store is materialized
    (bench_serving.py prepares one), lookups by customer_id go through it. The one place that
    follows pipeline.serving's API; it also knows the package's layout before the layers
    (``pipeline.settings``, ``pipeline.artifact``), so an older commit can be measured."""
    import importlib

    import numpy as np

    import pipeline

    # Decided by the files of the `pipeline` actually imported (an editable install's finder
    # could otherwise answer a missing module from another tree).
    layered = (Path(pipeline.__file__).parent / "core").is_dir()

    def first(new: str, old: str):
        return importlib.import_module(new if layered else old)

    settings_mod = first("pipeline.core.settings", "pipeline.settings")
    SegmentModel = first("pipeline.model.artifact", "pipeline.artifact").SegmentModel
    Preprocessor = first("pipeline.model.preprocessing", "pipeline.preprocessing").Preprocessor
    from pipeline.serving.app import InferenceApp
    from pipeline.serving.model import SegmentService

    names = settings_mod.FEATURE_NAMES
    d = len(names)
    if centroids.shape[1] != d:
        raise ValueError(f"centroids have {centroids.shape[1]} features, the platform {d}")
    pre = Preprocessor.from_dict({"feature_names": names, "log_features": [],
                                  "medians": [0.0] * d, "means": [0.0] * d, "stds": [1.0] * d})
    lookup = None
    if with_feast and os.environ.get("KMEANS_HOME"):
        features = first("pipeline.data.features", "pipeline.features")
        from pipeline.serving.lookup import OnlineLookup

        settings = settings_mod.load_settings()
        lookup = OnlineLookup(features.feature_store(settings), settings.feature_service, names)
    service = SegmentService(MODEL_NAME, lookup=lookup)
    service.load(SegmentModel(centroids, pre, {}), "1")
    moved = centroids + np.random.default_rng(1).normal(scale=0.01, size=centroids.shape)
    service.load(SegmentModel(moved, pre, {}), "2", "canary")
    service.set_traffic(10, "canary")
    extra = {}
    if "prediction_log" in inspect.signature(InferenceApp).parameters:
        # every request logged (sample rate 1.0, the default), as `kmeans serve` runs
        from pipeline.serving.predlog import PredictionLog

        extra["prediction_log"] = PredictionLog(
            Path(tempfile.mkdtemp(prefix="bench-predictions-")), list(names))
    if "serving" in inspect.signature(InferenceApp).parameters:  # the app takes its section
        grpc = {"grpc_port": int(os.environ["KMEANS_BENCH_GRPC_PORT"])} \
            if os.environ.get("KMEANS_BENCH_GRPC_PORT") else {}  # gRPC beside REST
        extra["serving"] = settings_mod.ServingSettings(serving_token=token,
                                                        admin_token=token + "-admin", **grpc)
    else:  # a commit before ServingSettings (compare_commits.py)
        extra.update(token=token, admin_token=token + "-admin")
    return InferenceApp(service, access_log=access_log or sys.stdout.buffer,
                        tune_gc=True, **extra)  # as `kmeans serve` runs


def build_bare(centroids):
    import numpy as np
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    c = np.ascontiguousarray(centroids, dtype=np.float32)
    c2 = np.einsum("ij,ij->i", c, c)

    async def infer(request):
        tensor = (await request.json())["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        cluster = (c2 - 2.0 * (x @ c.T)).argmin(axis=1)  # |x|^2 does not change the argmin
        return JSONResponse({"model_name": request.path_params["name"], "outputs": [
            {"name": "cluster", "datatype": "INT64", "shape": [len(cluster)],
             "data": cluster.tolist()}]})

    return Starlette(routes=[Route("/v2/models/{name}/infer", infer, methods=["POST"])])


def serve_kserve(centroids, port: int) -> None:
    import logging

    os.environ["KSERVE_LOGLEVEL"] = "WARNING"  # no per-request kserve.trace timing lines
    import kserve
    import numpy as np
    from kserve import InferRequest
    from kserve.utils.utils import get_predict_response

    class NearestCentroid(kserve.Model):
        def __init__(self):
            super().__init__(MODEL_NAME)
            self.c = np.ascontiguousarray(centroids, dtype=np.float32)
            self.c2 = np.einsum("ij,ij->i", self.c, self.c)

        def load(self) -> bool:
            self.ready = True
            return True

        async def predict(self, payload: InferRequest, headers=None, response_headers=None):
            x = payload.inputs[0].as_numpy().astype(np.float32, copy=False)
            cluster = (self.c2 - 2.0 * (x @ self.c.T)).argmin(axis=1)
            return get_predict_response(payload, cluster, self.name)  # as KServe's own servers

    model = NearestCentroid()
    model.load()
    server = kserve.ModelServer(http_port=port, workers=1, enable_grpc=False,
                                enable_latency_logging=False)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)  # no access log, as the others
    server.start([model])


def write_sklearn(centroids, out: Path) -> None:
    """A fitted scikit-learn KMeans whose cluster_centers_ are exactly ``centroids``, float32
    like the FP32 requests (its Cython predict needs both of one dtype)."""
    import joblib
    import numpy as np
    from sklearn.cluster import KMeans

    c = np.asarray(centroids, dtype=np.float32)
    km = KMeans(n_clusters=len(c), init=c, n_init=1, max_iter=1).fit(c)
    km.cluster_centers_ = c.copy()
    joblib.dump(km, out)


def _main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("name", choices=["bare", "ours", "kserve"])
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--centroids", type=Path, required=True)
    serve.add_argument("--token", required=True)
    sk = sub.add_parser("write-sklearn")
    sk.add_argument("--centroids", type=Path, required=True)
    sk.add_argument("--out", type=Path, required=True)
    ver = sub.add_parser("versions")
    ver.add_argument("name", choices=list(TARGETS))
    args = parser.parse_args()

    if args.cmd == "versions":
        from importlib import metadata

        found = {}
        for dist in TARGETS[args.name].report:
            try:
                found[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                found[dist] = None
        print(json.dumps({"python": sys.version.split()[0], **found}))
        return

    import numpy as np

    centroids = np.load(args.centroids)
    if args.cmd == "write-sklearn":
        write_sklearn(centroids, args.out)
    elif args.name == "kserve":
        sys.argv = sys.argv[:1]  # kserve parses sys.argv when imported
        serve_kserve(centroids, args.port)
    else:
        import uvicorn

        options: dict = {"log_level": "warning", "access_log": False, "loop": "uvloop",
                         "http": "httptools", "lifespan": "on"}
        if args.name == "ours":
            app = build_ours(centroids, args.token)
            # as `kmeans serve` runs it (its protocol: limits on heads, pipelining, writers)
            try:
                from pipeline.serving.server import uvicorn_options
            except ImportError:  # a commit before it (compare_commits.py)
                try:
                    from pipeline.serving.transport import limited_protocol
                except ImportError:
                    pass
                else:
                    options["http"] = limited_protocol(app)
            else:
                options = uvicorn_options(app, 10.0)
        else:
            app = build_bare(centroids)
        uvicorn.run(app, host="127.0.0.1", port=args.port, **options)


if __name__ == "__main__":
    _main()
