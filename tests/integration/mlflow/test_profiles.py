"""Segment profiles on a real MLflow store: a small model trained on the test lake's snapshot and
registered, its profile (JSON, heatmap, silhouette diagram, HTML) with the version, and the drift
review's side-by-side page of the champion's and the candidate's profiles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from starlette.testclient import TestClient

from pipeline import registry
from pipeline.core.settings import FEATURE_NAMES
from pipeline.data.features import Snapshot
from pipeline.data.validation import validate_snapshot
from pipeline.orchestration import reports_app
from pipeline.promotion import gates, profiles
from pipeline.promotion.register import register
from pipeline.training import stages
from tests.helpers.homes import make_settings

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PARAMS = {"k_min": 4, "k_max": 4, "engine": "local", "max_iter": 25, "n_init": 1}
SERVED = "http://127.0.0.1:8080/kmeans/reports/"


@pytest.fixture(scope="module")
def home(tmp_path_factory, snapshot_path):
    """Version 1 registered from a run on the session's snapshot. The drift settings make any
    difference between two samples a drift (so the next run's gates ask for a review), the
    reference sample is small, and the comparison gate lets any challenger through."""
    root = tmp_path_factory.mktemp("profiles-home")
    settings = make_settings(root, drift_sample_rows=100, drift_column_threshold=1e-9,
                             drift_share_threshold=0.0, gate_comparison_tolerance=1.0,
                             reports_url=SERVED)
    run_id = stages.train(settings, snapshot_path, {**PARAMS, "seed": 1})["run_id"]
    registered = register(settings, run_id)
    return settings, registered


@pytest.fixture(scope="module")
def frame(snapshot_path):
    return Snapshot.load(snapshot_path).frame()


def _png_size(path: Path) -> tuple[int, int]:
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 10_000, (path, len(data))
    height, width = matplotlib.image.imread(path).shape[:2]
    return width, height


def test_a_registered_version_has_its_segment_profile(home, frame):
    settings, registered = home
    page = Path(registered["profile"])
    folder = settings.reports_dir / "profiles" / "version-1"
    assert page == folder / "profile.html" and registered["version"] == "1"
    profile = json.loads((folder / "profile.json").read_text())
    model, _ = registry.download_model(settings, version="1")

    # One entry per segment, the sizes of the rows profiled (the whole 1,500-row snapshot).
    assert [c["cluster"] for c in profile["clusters"]] == model.cluster_ids.tolist()
    assert profile["sample_rows"] == profile["population_rows"] == len(frame) < 50_000
    assert sum(c["rows"] for c in profile["clusters"]) == len(frame)
    assert sum(c["share"] for c in profile["clusters"]) == pytest.approx(1.0)

    # Means and medians in raw units, z-scores against the whole population, top |z| first.
    raw = frame[FEATURE_NAMES].to_numpy(dtype=np.float64)
    cluster = model.assign(frame[FEATURE_NAMES]).cluster
    mu, sd = np.nanmean(raw, axis=0), np.nanstd(raw, axis=0)
    for c in profile["clusters"]:
        rows = raw[cluster == c["cluster"]]
        assert c["rows"] == len(rows) > 0
        spend = FEATURE_NAMES.index("total_spend_30d")
        assert c["mean"]["total_spend_30d"] == pytest.approx(np.nanmean(rows[:, spend]))
        assert c["median"]["total_spend_30d"] == pytest.approx(np.nanmedian(rows[:, spend]))
        z = (np.nanmean(rows, axis=0) - mu) / sd
        assert [c["z"][f] for f in FEATURE_NAMES] == pytest.approx(z.tolist(), abs=1e-5)
        largest = [FEATURE_NAMES[i] for i in np.argsort(-np.abs(z), kind="stable")[:3]]
        assert [t["feature"] for t in c["top_features"]] == largest
        assert [t["z"] for t in c["top_features"]] == [c["z"][f] for f in largest]
    assert any(t["z"] > 1 for c in profile["clusters"] for t in c["top_features"])

    # The silhouette diagram's stratified sample: every segment, at most ~3,000 rows.
    values = [v for c in profile["clusters"] for v in c["silhouette_values"]]
    assert len(values) == profile["silhouette"]["sample_rows"] <= 3000
    assert all(c["silhouette_values"] for c in profile["clusters"])
    assert -1 <= min(values) and max(values) <= 1
    assert 0 < profile["silhouette"]["mean"] < 1

    # The pictures: valid PNGs of a readable size; the page embeds them by relative link.
    assert min(_png_size(folder / "heatmap.png")) >= 300
    assert min(_png_size(folder / "silhouette.png")) >= 300
    text = page.read_text()
    assert 'src="heatmap.png"' in text and 'src="silhouette.png"' in text
    assert text.count("<tr><td>") == model.k  # one row per segment in the segments table
    assert "total_spend_30d" in text and "version 1" in text

    # In MLflow: the run's artifacts, the version's tag; the audit entry names the profile.
    run_id = registered["run_id"]
    logged = {a.path for a in registry.client(settings).list_artifacts(run_id, "profile")}
    assert logged == {f"profile/{n}" for n in ("heatmap.png", "silhouette.png", "profile.json",
                                              "profile.html")}
    assert profiles.logged(settings, run_id) == profile
    assert registry.model_version(settings, "1").tags["profile"] == \
        f"runs:/{run_id}/profile/profile.json"
    entry = registry.read_audit(settings)[-1]
    assert entry["figures"]["profile"]["report"] == str(page)


def test_the_drift_review_links_the_champion_and_the_candidate_side_by_side(
        home, snapshot_path, monkeypatch):
    settings, _ = home
    report = validate_snapshot(settings, Snapshot.load(snapshot_path)).report_html
    run_id = stages.train(settings, snapshot_path, {**PARAMS, "seed": 2})["run_id"]
    stages.evaluate(settings, run_id, snapshot_path)
    summary = gates.check(settings, run_id, snapshot_path, report)
    assert summary["review"], summary["gates"]["drift"]["message"]

    page = settings.reports_dir / "profiles" / f"run-{run_id}-vs-champion-1.html"
    assert summary["profiles"]["comparison"] == str(page) and page.exists()
    url = gates.report_url(settings, page)
    assert url == f"{SERVED}profiles/run-{run_id}-vs-champion-1.html"
    body = summary["review_body"]
    # Why this K: the rule's own sentence, from the run's model and tags.
    run = registry.client(settings).get_run(run_id)
    why = run.data.tags["k_why"]
    assert summary["k_choice"] == {"k": int(run.data.metrics["k"]), "why": why}
    assert f"**K = {summary['k_choice']['k']}**: {why}" in body and "silhouette" in why
    assert (f"**[Open the segment profiles of champion version 1 and of this candidate, "
            f"side by side]({url})** (`{page}`)") in body

    # The page: two columns, each with its heatmap, silhouette diagram and tables, by links
    # relative to the page that resolve inside the reports folder.
    text = page.read_text()
    assert 'class="cols"' in text and "Champion: version 1" in text
    for folder in ("version-1", f"run-{run_id}"):
        for picture in ("heatmap.png", "silhouette.png", "profile.json"):
            assert f'src="{folder}/{picture}"' in text or f'href="{folder}/{picture}"' in text
            assert (page.parent / folder / picture).is_file()
    assert text.count("most distinguishing features") == 2
    assert text.index("version-1/heatmap.png") < text.index(f"run-{run_id}/heatmap.png")
    # The candidate's profile went with its run too (registration reuses it).
    logged = {a.path for a in registry.client(settings).list_artifacts(run_id, "profile")}
    assert "profile/heatmap.png" in logged

    # As the reports plugin serves it: the page from the review's link, then its pictures.
    monkeypatch.setenv("KMEANS_HOME", str(settings.home))
    served = TestClient(reports_app.reports_app)
    path = unquote(urlparse(url).path).removeprefix("/kmeans")
    reply = served.get(path)
    assert reply.status_code == 200 and reply.text == text
    for picture in ("version-1/heatmap.png", f"run-{run_id}/silhouette.png"):
        image = served.get(f"/reports/profiles/{picture}")
        assert image.status_code == 200 and image.content[:8] == PNG_MAGIC


def test_a_champion_without_a_profile_is_profiled_from_its_reference_sample(home):
    """A version registered before profiles were kept: no profile with its run nor in the
    reports folder. The side-by-side page profiles it from its reference sample, and says so."""
    settings, registered = home
    champion = registry.alias_version(settings, "champion")
    run = registry.client(settings).get_run(champion.run_id)
    logged = Path(urlparse(run.info.artifact_uri).path) / "profile"
    local = profiles.version_dir(settings, "1")
    aside = settings.home / "aside"
    aside.mkdir()
    shutil.move(logged, aside / "logged")
    shutil.move(local, aside / "local")
    try:
        assert profiles.logged(settings, champion.run_id) is None
        candidate = profiles.profiles_dir(settings) / "run-candidate"
        profiles.write(profiles.read(aside / "local"), candidate, title="a candidate")
        page = profiles.side_by_side(settings, candidate, champion)
        text = page.read_text()
        assert ("was registered before profiles were kept: this profile was computed now, from "
                "its reference sample of 100 rows.") in text
        profile = profiles.read(local)
        assert profile["sample_rows"] == 100 and profile["source"] == (
            "the version's reference sample")
        assert 'src="version-1/heatmap.png"' in text and (local / "heatmap.png").is_file()
    finally:
        shutil.rmtree(local, ignore_errors=True)
        shutil.move(aside / "local", local)
        shutil.move(aside / "logged", logged)
