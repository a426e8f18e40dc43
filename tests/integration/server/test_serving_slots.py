"""Stable and canary slots: sticky weighted split, shadow mode, the admin API against a real
MLflow registry, a tampered artifact refused, and reloads under load with no failed request."""

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from pipeline import registry
from pipeline.core.settings import ServingSettings
from pipeline.serving.app import InferenceApp
from pipeline.serving.model import SegmentService, bucket
from pipeline.serving.server import build_app, running
from tests.helpers.homes import make_settings
from tests.helpers.serving import INFER, NAME, make_model
from tests.helpers.waiting import wait_until

ADMIN = "admin-secret"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def reg(tmp_path_factory, snapshot_path):
    """A real MLflow store with versions 1..3 of the model; champion=1, challenger=2."""
    import mlflow

    home = tmp_path_factory.mktemp("registry-home")
    s = make_settings(home, admin_token=ADMIN)
    registry.configure(s)
    versions = {}
    for seed in (0, 1, 2):
        make_model(snapshot_path, home / f"artifact-{seed}", k=4, seed=seed)
        with mlflow.start_run(experiment_id=registry.configure(s)) as run:
            pass
        versions[seed] = registry.log_model_version(s, run.info.run_id, home / f"artifact-{seed}",
                                                    {"seed": seed})
    c = registry.client(s)
    c.set_registered_model_alias(s.model_name, "champion", versions[0])
    c.set_registered_model_alias(s.model_name, "challenger", versions[1])
    return s, versions


@pytest.fixture(scope="module")
def two_models(snapshot_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("slots")
    return make_model(snapshot_path, root / "a", seed=0), make_model(snapshot_path, root / "b",
                                                                     seed=1)


def _rows(model, n, seed=3):
    return np.asarray(model.preprocessor.means) + np.random.default_rng(seed).normal(size=(n, 12))


def _infer(client, x):
    reply = client.post(INFER, json={"inputs": [{"name": "features", "datatype": "FP64",
                                                 "shape": list(x.shape), "data": x.tolist()}]})
    assert reply.status_code == 200, reply.text
    return {o["name"]: o["data"] for o in reply.json()["outputs"]}


def test_buckets_are_stable_and_uniform():
    ids = np.arange(100_000, 140_000)
    b = bucket(ids)
    assert np.array_equal(b, bucket(ids.copy())) and b.min() >= 0 and b.max() < 10_000
    assert abs((b < 3000).mean() - 0.30) < 0.01
    rows = np.random.default_rng(0).normal(size=(20_000, 12))
    rows[0, 3] = np.nan
    br = bucket(rows)
    assert np.array_equal(br, bucket(rows.copy())) and abs((br < 5000).mean() - 0.5) < 0.02
    # one key alone takes the pure-Python path: it must land in the same bucket as in a batch
    assert [int(bucket(rows[i:i + 1])[0]) for i in range(50)] == br[:50].tolist()
    assert [int(bucket(ids[i:i + 1])[0]) for i in range(50)] == b[:50].tolist()
    assert int(bucket(np.array([-5]))[0]) == int(bucket(np.array([-5, 7]))[0])


def test_weighted_split_is_sticky_and_only_moves_keys_forward(two_models):
    a, b = two_models
    service = SegmentService(NAME, max_batch_rows=5000)
    service.load(a, "1")
    service.load(b, "2", "canary")
    x = _rows(a, 4000)
    with running(InferenceApp(service, ServingSettings(admin_token=ADMIN))) as url, \
            httpx.Client(base_url=url, timeout=10) as http:
        set_to = http.post("/admin/traffic", json={"weight": 30, "mode": "canary"}, headers=AUTH)
        assert set_to.json() == {"routing": {"stable": "1", "canary": "2", "weight": 30.0,
                                             "mode": "canary"}}, set_to.text
        first = np.array(_infer(http, x)["model_version"])
        again = np.array(_infer(http, x)["model_version"])
        assert np.array_equal(first, again), "the same rows must see the same version"
        assert abs((first == "2").mean() - 0.30) < 0.03
        out = _infer(http, x[first == "2"][:50])
        assert np.array_equal(out["cluster"], b.assign(x[first == "2"][:50]).cluster)
        http.post("/admin/traffic", json={"weight": 60}, headers=AUTH)
        wider = np.array(_infer(http, x)["model_version"])
        assert (wider[first == "2"] == "2").all(), "raising the weight never moves keys back"
        assert abs((wider == "2").mean() - 0.60) < 0.03
        window = http.post("/admin/window", headers=AUTH).json()["versions"]
        canary = window["2"]
        assert canary["compared_rows"] > 0 and 0 <= canary["agreement"] <= 1
        assert canary["requests"] == 4 and canary["latency_ms"]["p99"] > 0
        assert http.post("/admin/window", headers=AUTH).json()["versions"] == {}
        text = http.get("/metrics").text
        # each version is counted for the rows it answered (a split request's canary rows)
        answered = {v: 2 * int((first == v).sum()) + int((wider == v).sum())
                    + (50 if v == "2" else 0) for v in ("1", "2")}
        counted = {v: sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                          if line.startswith("kmeans_assignments_total{")
                          and f'model_version="{v}"' in line) for v in ("1", "2")}
        assert counted == answered
        assert 'kmeans_canary_weight_percent{mode="canary"} 60.0' in text
        assert 'kmeans_model_version{slot="canary"} 2.0' in text


def test_shadow_scores_both_and_answers_with_stable(two_models):
    a, b = two_models
    service = SegmentService(NAME)
    service.load(a, "1")
    service.load(b, "2", "canary")
    service.set_traffic(0, "shadow")
    x = _rows(a, 500)
    with running(InferenceApp(service, ServingSettings(admin_token=ADMIN))) as url, \
            httpx.Client(base_url=url, timeout=10) as http:
        out = _infer(http, x)
        assert set(out["model_version"]) == {"1"}
        assert out["cluster"] == a.assign(x).cluster.tolist()
        window = http.post("/admin/window", headers=AUTH).json()["versions"]
    expected = (a.assign(x).cluster == b.assign(x).cluster).mean()
    assert window["2"]["compared_rows"] == 500
    assert window["2"]["agreement"] == pytest.approx(expected)
    assert window["1"]["requests"] == window["2"]["requests"] == 1


def test_server_loads_champion_and_challenger_from_mlflow(reg):
    s, versions = reg
    with running(build_app(s, with_feast=False)) as url, \
            httpx.Client(base_url=url, timeout=30, headers=AUTH) as http:
        state = http.get("/admin/state").json()
        assert state["routing"] == {"stable": versions[0], "canary": versions[1], "weight": 0.0,
                                    "mode": "shadow"}
        meta = http.get(f"/v2/models/{NAME}").json()
        assert meta["versions"] == [versions[0], versions[1]]


def test_admin_lifecycle_and_conflicts(reg):
    s, versions = reg
    with running(build_app(s, with_feast=False, canary_alias=None)) as url, \
            httpx.Client(base_url=url, timeout=30, headers=AUTH) as http:
        promote = http.post("/admin/promote", json={})
        assert promote.status_code == 409 and "no canary" in promote.json()["error"]
        weight = http.post("/admin/traffic", json={"weight": 10})
        assert weight.status_code == 409 and "no canary is loaded" in weight.json()["error"]
        load = http.post("/admin/load", json={"alias": "challenger"})
        assert load.json()["routing"]["canary"] == versions[1]
        wrong = http.post("/admin/promote", json={"version": versions[2]})
        assert wrong.status_code == 409 and f"not {versions[2]}" in wrong.json()["error"]
        bad = http.post("/admin/traffic", json={"weight": 150})
        assert bad.status_code == 400 and "[0, 100]" in bad.json()["error"]
        assert http.post("/admin/traffic", json={"weight": 50}).json()["routing"] == {
            "stable": versions[0], "canary": versions[1], "weight": 50.0, "mode": "canary"}
        routing = http.post("/admin/promote", json={"version": versions[1]}).json()["routing"]
        assert routing == {"stable": versions[1], "canary": None, "weight": 0.0, "mode": "canary"}
        unknown = http.post("/admin/load", json={"version": "999"})
        assert unknown.status_code == 404 and "999" in unknown.json()["error"]
        both = http.post("/admin/load", json={"version": "1", "alias": "champion"})
        assert both.status_code == 400 and "exactly one" in both.json()["error"]
        reloaded = http.post("/admin/load", json={"version": versions[0]}).json()["routing"]
        assert (reloaded["stable"], reloaded["canary"]) == (versions[1], versions[0])
        assert http.post("/admin/drop", json={"version": versions[0]}).json()["routing"] == {
            "stable": versions[1], "canary": None, "weight": 0.0, "mode": "canary"}


def test_tampered_artifact_is_refused_and_serving_goes_on(reg, tmp_path):
    s, versions = reg
    app = build_app(s, with_feast=False, canary_alias=None)
    # Edit version 3's centroids in the artifact store, behind the checksums' back.
    stored = sorted(Path(s.artifact_root).rglob("centroids.npy"), key=lambda p: p.stat().st_mtime)
    target = stored[-1]
    original = target.read_bytes()
    target.write_bytes(original[:-8] + b"\x00" * 8)
    try:
        with running(app) as url, httpx.Client(base_url=url, timeout=30, headers=AUTH) as http:
            reply = http.post("/admin/load", json={"version": versions[2]})
            assert reply.status_code == 422
            assert "refusing a modified artifact" in reply.json()["error"]
            assert "centroids.npy" in reply.json()["error"]
            assert http.get("/admin/state").json()["routing"]["canary"] is None
            x = _rows(app.service.routing.stable.model, 2)
            assert _infer(http, x)["model_version"] == [versions[0]] * 2
    finally:
        target.write_bytes(original)


def test_reloads_under_load_fail_no_request(reg):
    """Clients hammer the server while the admin API loads, weights, promotes and drops
    versions from the registry: every request must succeed."""
    s, versions = reg
    app = build_app(s, with_feast=False, canary_alias=None)
    x = _rows(app.service.routing.stable.model, 3)
    body = {"inputs": [{"name": "features", "datatype": "FP64", "shape": [3, 12],
                        "data": x.tolist()}]}
    stop = threading.Event()
    results = {"ok": 0, "failed": []}
    lock = threading.Lock()

    def client(url):
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                try:
                    reply = http.post(INFER, json=body)
                    good = reply.status_code == 200 and len(reply.json()["outputs"][0]["data"]) == 3
                    failure = None if good else f"{reply.status_code} {reply.text[:100]}"
                except httpx.HTTPError as err:
                    failure = repr(err)
                with lock:
                    if failure:
                        results["failed"].append(failure)
                    else:
                        results["ok"] += 1

    with running(app) as url, httpx.Client(base_url=url, timeout=60, headers=AUTH) as admin:
        threads = [threading.Thread(target=client, args=(url,)) for _ in range(4)]
        for t in threads:
            t.start()
        swaps = 0
        started = time.monotonic()
        candidates = [versions[1], versions[0]]

        def swap() -> bool:
            """One load, split, promote-or-drop; done after 8 s of it (the exposure under
            test), once there were 3 swaps and 100 answered requests (on a slow machine,
            later)."""
            nonlocal swaps
            stable = admin.get("/admin/state").json()["routing"]["stable"]
            new = next(v for v in candidates if v != stable)
            assert admin.post("/admin/load", json={"version": new}).status_code == 200
            assert admin.post("/admin/traffic", json={"weight": 50}).status_code == 200
            op = "/admin/promote" if swaps % 2 == 0 else "/admin/drop"
            assert admin.post(op, json={"version": new}).status_code == 200
            swaps += 1
            return (time.monotonic() - started >= 8 and swaps >= 3
                    and results["ok"] > 100)

        try:
            wait_until(swap, 60, "reloads under load: 8 s, 3 swaps and 100 answered requests",
                       progress=lambda: (swaps, results["ok"]), interval=0)
        finally:
            stop.set()
        for t in threads:
            t.join()
    assert results["failed"] == []
    assert swaps >= 3 and results["ok"] > 100
