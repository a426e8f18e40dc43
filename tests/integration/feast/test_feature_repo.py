"""The stock `feast` CLI, run from the feature repo as Feast users run it, on the pipeline's data.

Layout: a copy of ``feature_repo/`` beside a temporary home named ``.kmeans``, as the project keeps
them (``<root>/feature_repo``, ``<root>/.kmeans``), so the repo's relative paths hold unchanged and
the files under test are the real ones. The real ``feature_repo/`` pointed at the temporary home
through an environment variable would need ``${...}`` paths in feature_store.yaml (Feast expands
them, without defaults, so a plain ``feast plan`` would break) and still could not move the
FileSource path, which is Python.

The pipeline lands the lake, applies the repo and materializes up to the window start; the CLI
then plans, applies, materializes the window and serves it.
"""

import contextlib
import datetime as dt
import os
import re
import signal
import subprocess
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from pipeline.core.settings import FEATURE_NAMES
from pipeline.data import features
from pipeline.data.datagen import generate_lake
from pipeline.data.ingest import OFFLINE_TABLE, ingest_lake
from tests.helpers.clock import BEGIN, DAYS, END, START
from tests.helpers.feast import FEAST, copy_repo, feast
from tests.helpers.homes import make_settings
from tests.helpers.net import free_port, wait_ready

SERVICE = "customer_segments_v1"
DECLARED_PATH = "../.kmeans/offline/customer_profile"
SEGMENT_PATH = "../.kmeans/offline/customer_segment"


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """(repo, settings): the pipeline has landed the lake, applied, materialized to BEGIN."""
    root = tmp_path_factory.mktemp("cli")
    repo = copy_repo(root)
    s = make_settings(root / ".kmeans", feast_repo=repo)
    generate_lake(s.lake_dir, n_customers=1500, start=START, days=DAYS, seed=11)
    ingest_lake(s, BEGIN.date(), END.date())
    features.apply_repo(s)
    # Sets where `materialize-incremental` starts; the window's rows are all on or after BEGIN.
    features.materialize(s, BEGIN - dt.timedelta(days=30), BEGIN)
    return repo, s


@pytest.fixture(scope="module")
def known(layout):
    """(customer id, the feature values of its latest offline row before END)."""
    _, s = layout
    offline = pq.read_table(s.offline_dir / OFFLINE_TABLE).to_pandas()
    offline = offline[offline.event_timestamp < END].sort_values("event_timestamp")
    # A customer without missing values: a null travels as NaN offline and as None online.
    latest = offline.groupby("customer_id").tail(1).dropna(subset=FEATURE_NAMES)
    row = latest.sort_values("customer_id").iloc[0]
    return int(row.customer_id), {name: float(row[name]) for name in FEATURE_NAMES}


def online_values(repo: Path, cid: int) -> dict:
    """What a Feast user reads through the SDK on the repo."""
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(repo))
    row = store.get_online_features(features=store.get_feature_service(SERVICE),
                                    entity_rows=[{"customer_id": cid}]).to_dict()
    return {name: row[name][0] for name in FEATURE_NAMES}


@pytest.fixture(scope="module")
def materialized(layout, known):
    """`feast materialize-incremental END` run once; the online values before and after."""
    repo, _ = layout
    cid, _ = known
    before = online_values(repo, cid)
    result = feast(repo, "materialize-incremental", END.strftime("%Y-%m-%dT%H:%M:%S"))
    return result, before, online_values(repo, cid)


def _without_meta(proto_text: str) -> str:
    # every `meta { ... }` block, also those nested in an embedded source
    return re.sub(r"^([ \t]*)meta \{\n(?:\1[ \t].*\n)*\1\}\n?", "",
                  proto_text.strip() + "\n", flags=re.M)


def test_feast_plan_on_a_fresh_clone(tmp_path):
    """What CI of a Feast repo runs: the declarations parse and describe the platform's objects."""
    repo = copy_repo(tmp_path)
    (tmp_path / ".kmeans" / "feast").mkdir(parents=True)  # as `make feast-plan` does
    result = feast(repo, "plan")
    assert result.returncode == 0, result.stderr[-2000:]
    for line in ("Created project customer_segments", "Created entity customer",
                 "Created feature view customer_profile",
                 "Created feature service customer_segments_v1"):
        assert line in result.stdout, result.stdout


def test_feast_plan_sees_no_change_after_the_pipeline_applied(layout):
    repo, s = layout
    assert features.feature_store(s).get_data_source("customer_profile_source").path \
        == DECLARED_PATH
    result = feast(repo, "plan")
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "No changes to infrastructure" in out, out
    changes = re.findall(r"^(Created|Deleted|Updated) (.+)$", out, flags=re.M)
    # Feast lists a feature view as updated on every plan, its embedded batch source differing
    # only in the source's registration timestamps (`meta`); the same plan right after a
    # `feast apply` shows it too. Anything else would be a real difference.
    assert set(changes) <= {("Updated", "feature view customer_profile"),
                            ("Updated", "feature view customer_segment")}, out
    diffs = re.findall(r"^\t(\w+): (.*?)\n -> (.*?)\n\n", out, flags=re.S | re.M)
    # (a push source's batch source differs the same way, inside the view's stream_source)
    assert {d[0] for d in diffs} <= {"batch_source", "stream_source"}, out
    assert len(diffs) >= len(changes), out
    for _, before, after in diffs:
        declared = re.search(r'uri: "([^"]+)"', before).group(1)
        assert declared in (DECLARED_PATH, SEGMENT_PATH), before
        assert f'uri: "{declared}"' in after
        assert _without_meta(before) == _without_meta(after), out


def test_feast_apply(layout):
    repo, s = layout
    result = feast(repo, "apply")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Applying changes for project customer_segments" in result.stdout, result.stdout
    # What the pipeline reads afterwards: the same declarations, on the same table.
    store = features.feature_store(s)
    assert store.get_data_source("customer_profile_source").path == DECLARED_PATH
    service = store.get_feature_service(SERVICE)
    assert [f.name for v in service.feature_view_projections for f in v.features] \
        == FEATURE_NAMES


def test_feast_materialize_incremental(materialized, known):
    result, before, after = materialized
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"from {BEGIN:%Y-%m-%d %H:%M:%S}" in re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    _, values = known
    assert all(v is None for v in before.values()), before
    assert after == pytest.approx(values, rel=1e-12)



def test_feast_serve(layout, materialized, known, tmp_path):
    repo, _ = layout
    cid, values = known
    server, url, _ = _start(repo, "serve", tmp_path, timeout=45)
    try:
        reply = httpx.post(f"{url}/get-online-features", timeout=10, json={
            "feature_service": SERVICE, "entities": {"customer_id": [cid, 42]}})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        names = body["metadata"]["feature_names"]
        served = {n: r["values"] for n, r in zip(names, body["results"], strict=True)}
        assert served["customer_id"] == [cid, 42]
        assert {n: served[n][0] for n in FEATURE_NAMES} == pytest.approx(values, rel=1e-12)
        assert all(served[n][1] is None for n in FEATURE_NAMES)  # unknown customer
    finally:
        _stop(server)


def test_feast_ui(layout, materialized, tmp_path):
    """`make feast-ui`: the stock web UI starts on the applied repo (it needs grpc_health, of
    feast's grpcio extra) and lists the project."""
    repo, _ = layout
    server, url, log = _start(repo, "ui", tmp_path, timeout=90)
    try:
        projects = httpx.get(f"{url}/projects-list.json", timeout=10)
        assert projects.status_code == 200, projects.text
        assert [p["id"] for p in projects.json()["projects"]] == [
            "customer_segments"]
        page = httpx.get(f"{url}/", timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert "ModuleNotFoundError" not in log.read_text()
    finally:
        _stop(server)


def _start(repo: Path, command: str, tmp_path: Path, *, timeout: float):
    """``feast <command>`` on loopback, once its /health answers (an exit fails at once with
    the log's tail): the process, its URL and its log. Own process group: it may start
    workers; :func:`_stop` ends all of them."""
    port = free_port()
    log = tmp_path / f"feast-{command}.log"
    with log.open("w") as out:
        server = subprocess.Popen([str(FEAST), command, "-h", "127.0.0.1", "-p", str(port)],
                                  cwd=repo, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(server, url, log, timeout=timeout, tail=2000, path="/health")
    except BaseException:
        _stop(server)
        raise
    return server, url, log


def _stop(server: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
