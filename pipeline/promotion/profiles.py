"""Segment profiles people can read: what each cluster of a model is, in the features' own units.

For each segment: its size and share, its mean and median per feature in raw units (dollars,
days, shares), and the features that most distinguish it: the z-score of the segment's mean
against the whole population (``(segment mean - population mean) / population std``), the three
largest by absolute value. A per-cluster silhouette diagram shows how well each segment holds
together (on the preprocessed features, a stratified sample).

A profile is a folder inside the reports folder (``reports/profiles/``), served as is by the
reports plugin (HTML, JSON and PNG only, relative links between them):

- ``profile.json``: the figures (the only input of the three renderings below);
- ``heatmap.png``: segments x features, coloured by z-score (diverging, centred at 0), annotated;
- ``silhouette.png``: the classic diagram, sorted silhouette values per cluster as bands;
- ``profile.html``: a table per segment and the mean/median table, embedding the two PNGs.

This module computes the figures (:func:`compute`, JSON-ready) and keeps the folders; the
renderings are :mod:`pipeline.promotion.profile_report` (pure: figures in, PNG and HTML out)
and the MLflow side is :mod:`pipeline.promotion.profile_tracking`.

The gates profile the candidate (``run-<run id>/``) and write a page that shows the champion's
profile and the candidate's side by side (``run-<run id>-vs-champion-<N>.html``), linked from
the drift review. Registration logs the registered version's profile with its run (artifacts
under ``profile/``) and writes it to ``version-<N>/``. A champion registered before profiles
were kept is profiled on the fly from its reference sample.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import silhouette_samples

from pipeline import registry
from pipeline.core.io import atomic_write_bytes, atomic_write_json
from pipeline.core.settings import Settings
from pipeline.model.artifact import SegmentModel
from pipeline.promotion import drift
from pipeline.promotion.profile_report import (
    FILES,
    HEATMAP_FILE,
    HTML_FILE,
    JSON_FILE,
    SILHOUETTE_FILE,
    heatmap_png,
    profile_page,
    side_by_side_page,
    silhouette_png,
)
from pipeline.promotion.profile_tracking import (
    ARTIFACT_DIR,
    artifact_uri,
    log_to_run,
    logged,
    registration_model,
)
from pipeline.training.evaluation import stratified_sample

log = logging.getLogger(__name__)

FORMAT = 1
#: Rows profiled at most (a seeded uniform sample of the snapshot), and rows of the silhouette
#: diagram at most (a stratified sample of those: every segment represented).
SAMPLE_ROWS = 50_000
SILHOUETTE_ROWS = 3_000
TOP_FEATURES = 3


# ---------------------------------------------------------------- the figures


def fingerprint(model: SegmentModel) -> str:
    """What a profile was computed from: centroids, cluster ids and preprocessing."""
    digest = hashlib.sha256(np.ascontiguousarray(model.centroids).tobytes())
    digest.update(json.dumps({"ids": model.cluster_ids.tolist(),
                              "pre": model.preprocessor.to_dict()}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def compute(model: SegmentModel, frame: pd.DataFrame, *, seed: int = 0,
            sample_rows: int = SAMPLE_ROWS, silhouette_rows: int = SILHOUETTE_ROWS,
            source: str = "snapshot") -> dict:
    """The profile of each segment of ``model`` over the raw feature rows of ``frame`` (at most
    ``sample_rows`` of them, a seeded uniform sample). JSON-ready; missing values are skipped
    in means and medians (NaN in the data, None in the JSON)."""
    names = list(model.feature_names)
    sample = drift.reference_sample(frame, sample_rows, seed)[names].astype(np.float64)
    if sample.empty:
        raise ValueError("no rows to profile")
    x = model.preprocessor.transform(sample)
    cluster = model.assign_scaled(x).cluster
    # Positions 0..k-1 of the cluster ids (the ids are stable ids, not positions).
    order = np.argsort(model.cluster_ids)
    position = order[np.searchsorted(model.cluster_ids[order], cluster)]
    sizes = np.bincount(position, minlength=model.k)

    pop_mean, pop_std = sample.mean(), sample.std(ddof=0)
    means = sample.groupby(position).mean()
    medians = sample.groupby(position).median()
    clusters = []
    for i, cid in enumerate(model.cluster_ids.tolist()):
        entry: dict[str, Any] = {"cluster": cid, "rows": int(sizes[i]),
                                 "share": float(sizes[i] / len(sample))}
        if sizes[i]:
            z = {f: _z(means.at[i, f], pop_mean[f], pop_std[f]) for f in names}
            scored = {f: v for f, v in z.items() if v is not None}
            ranked = sorted(scored, key=lambda f: -abs(scored[f]))  # stable: ties keep order
            entry.update(mean={f: _float(means.at[i, f]) for f in names},
                         median={f: _float(medians.at[i, f]) for f in names}, z=z,
                         top_features=[{"feature": f, "z": z[f]} for f in ranked[:TOP_FEATURES]])
        else:
            entry.update(mean=dict.fromkeys(names), median=dict.fromkeys(names),
                         z=dict.fromkeys(names), top_features=[])
        clusters.append(entry)

    silhouette = _silhouette(x, position, model.cluster_ids, silhouette_rows, seed)
    for entry, values in zip(clusters, silhouette.pop("per_cluster"), strict=True):
        entry["silhouette"] = values["mean"]
        entry["silhouette_values"] = values["values"]
    return {
        "format": FORMAT, "fingerprint": fingerprint(model), "k": model.k,
        "cluster_ids": model.cluster_ids.tolist(), "features": names,
        "run_id": model.metadata.get("run_id"), "data_hash": model.metadata.get("data_hash"),
        "source": source, "population_rows": len(frame), "sample_rows": len(sample),
        "sample_seed": seed,
        "population": {"mean": {f: _float(pop_mean[f]) for f in names},
                       "median": {f: _float(sample[f].median()) for f in names},
                       "std": {f: _float(pop_std[f]) for f in names}},
        "silhouette": silhouette,
        "clusters": clusters,
    }


def _silhouette(x: np.ndarray, position: np.ndarray, ids: np.ndarray, rows: int,
                seed: int) -> dict:
    """Silhouette values of a stratified sample (each row weighted back to the population for
    the mean), sorted per cluster."""
    k = len(ids)
    idx, weights = stratified_sample(position, rows, np.random.default_rng(seed))
    labels = position[idx]
    empty: list[dict[str, Any]] = [{"mean": None, "values": []} for _ in range(k)]
    if len(np.unique(labels)) < 2 or len(idx) <= len(np.unique(labels)):
        return {"sample_rows": int(len(idx)), "mean": None, "per_cluster": empty,
                "note": "too few segments or rows for a silhouette"}
    values = silhouette_samples(x[idx], labels)
    per_cluster = []
    for i in range(k):
        own = np.sort(values[labels == i])
        per_cluster.append({"mean": float(own.mean()) if len(own) else None,
                            "values": [round(float(v), 4) for v in own]})
    return {"sample_rows": int(len(idx)), "mean": float(np.average(values, weights=weights)),
            "per_cluster": per_cluster}


def _z(mean: float, pop_mean: float, pop_std: float) -> float | None:
    if not (np.isfinite(mean) and np.isfinite(pop_mean) and np.isfinite(pop_std)):
        return None
    return 0.0 if pop_std <= 0 else round(float((mean - pop_mean) / pop_std), 6)


def _float(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


# ---------------------------------------------------------------- the folder: JSON, PNGs, HTML


def write(profile: dict, folder: Path, *, title: str) -> Path:
    """Write a profile's folder (JSON, heatmap, silhouette diagram, HTML page, each by an
    atomic rename); returns the HTML page's path."""
    folder.mkdir(parents=True, exist_ok=True)
    profile = {**profile, "title": title}
    atomic_write_json(folder / JSON_FILE, profile)
    atomic_write_bytes(folder / HEATMAP_FILE, heatmap_png(profile))
    atomic_write_bytes(folder / SILHOUETTE_FILE, silhouette_png(profile))
    return atomic_write_bytes(folder / HTML_FILE, profile_page(profile).encode())


def read(folder: Path) -> dict:
    return json.loads((folder / JSON_FILE).read_text())


# ---------------------------------------------------------------- with the registry


def profiles_dir(settings: Settings) -> Path:
    return settings.reports_dir / "profiles"


def version_dir(settings: Settings, version: str) -> Path:
    return profiles_dir(settings) / f"version-{version}"


def for_candidate(settings: Settings, run_id: str, frame: pd.DataFrame, *, source: str,
                  seed: int = 0) -> dict:
    """At the gates: profile the model the run would register, keep it with the run and in
    ``reports/profiles/run-<run id>/``, and with a champion write the side-by-side page.
    Returns the paths (JSON-friendly)."""
    model = registration_model(settings, run_id)
    folder = profiles_dir(settings) / f"run-{run_id}"
    page = write(compute(model, frame, seed=seed, source=source), folder,
                 title=f"run {run_id[:12]}")
    log_to_run(settings, run_id, folder)
    out = {"candidate": str(page), "artifact": artifact_uri(run_id), "champion_version": None,
           "comparison": None}
    champion = registry.alias_version(settings, "champion")
    if champion is not None:
        out["champion_version"] = str(champion.version)
        out["comparison"] = str(side_by_side(settings, folder, champion))
    return out


def for_registration(settings: Settings, run_id: str, model: SegmentModel,
                     frame: pd.DataFrame, *, source: str, seed: int = 0) -> dict:
    """The profile of the model being registered: the one the gates logged with the run if it
    is of this very model, else computed now."""
    profile = logged(settings, run_id)
    if (profile is None or profile.get("format") != FORMAT
            or profile.get("fingerprint") != fingerprint(model)):
        profile = compute(model, frame, seed=seed, source=source)
    return profile


def publish_version(settings: Settings, version: str, run_id: str, profile: dict) -> dict:
    """Write a registered version's profile to ``reports/profiles/version-<N>/`` and log it
    with its run under ``profile/``; returns where it is."""
    folder = version_dir(settings, version)
    page = write(profile, folder, title=f"version {version}")
    log_to_run(settings, run_id, folder)
    return {"report": str(page), "artifact": artifact_uri(run_id)}


def champion_profile(settings: Settings, champion: Any) -> tuple[Path | None, str | None]:
    """The folder of the champion's profile, and a note when it is not the one registration
    wrote: its run's logged profile, else computed now from its reference sample (a version
    registered before profiles were kept), else None."""
    version = str(champion.version)
    folder = version_dir(settings, version)
    if (folder / JSON_FILE).exists():
        return folder, None
    profile = logged(settings, champion.run_id)
    if profile is not None:
        write(profile, folder, title=f"version {version}")
        return folder, None
    reference = drift.load_reference(settings, champion.run_id)
    if reference is None:
        return None, (f"Champion version {version} has no segment profile and no reference "
                      f"sample (it was registered before either was kept): nothing to show.")
    model, _ = registry.download_model(settings, version=version)
    write(compute(model, reference, source="the version's reference sample"), folder,
          title=f"version {version}")
    log.info("profiled champion version %s from its reference sample", version)
    return folder, (f"Champion version {version} was registered before profiles were kept: "
                    f"this profile was computed now, from its reference sample of "
                    f"{len(reference):,} rows.")


def side_by_side(settings: Settings, candidate: Path, champion: Any) -> Path:
    """The page that shows the champion's profile and the candidate's next to each other:
    ``reports/profiles/<candidate folder>-vs-champion-<N>.html``."""
    version = str(champion.version)
    champ_folder, note = champion_profile(settings, champion)
    page = side_by_side_page(read(champ_folder) if champ_folder is not None else None,
                             champ_folder.name if champ_folder is not None else "", note,
                             version, read(candidate), candidate.name)
    path = profiles_dir(settings) / f"{candidate.name}-vs-champion-{version}.html"
    return atomic_write_bytes(path, page.encode())


__all__ = ["ARTIFACT_DIR", "FILES", "FORMAT", "artifact_uri", "champion_profile", "compute",
           "fingerprint", "for_candidate", "for_registration", "log_to_run", "logged",
           "profiles_dir", "publish_version", "read", "registration_model", "side_by_side",
           "version_dir", "write"]
