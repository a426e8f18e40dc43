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

The gates profile the candidate (``run-<run id>/``) and write a page that shows the champion's
profile and the candidate's side by side (``run-<run id>-vs-champion-<N>.html``), linked from
the drift review. Registration logs the registered version's profile with its run (artifacts
under ``profile/``) and writes it to ``version-<N>/``. A champion registered before profiles
were kept is profiled on the fly from its reference sample.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import logging
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
from sklearn.metrics import silhouette_samples

from pipeline import registry
from pipeline.core.io import atomic_write_bytes, atomic_write_json
from pipeline.core.settings import Settings
from pipeline.model.artifact import SegmentModel
from pipeline.promotion import drift
from pipeline.training.evaluation import stratified_sample
from pipeline.training.stages import download_candidate

log = logging.getLogger(__name__)

FORMAT = 1
ARTIFACT_DIR = "profile"
JSON_FILE = "profile.json"
HTML_FILE = "profile.html"
HEATMAP_FILE = "heatmap.png"
SILHOUETTE_FILE = "silhouette.png"
FILES = (JSON_FILE, HTML_FILE, HEATMAP_FILE, SILHOUETTE_FILE)
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
    atomic_write_bytes(folder / HEATMAP_FILE, _heatmap_png(profile))
    atomic_write_bytes(folder / SILHOUETTE_FILE, _silhouette_png(profile))
    page = _page(f"Segment profile: {title}", _column(profile, ""))
    return atomic_write_bytes(folder / HTML_FILE, page.encode())


def read(folder: Path) -> dict:
    return json.loads((folder / JSON_FILE).read_text())


def _z_matrix(profile: dict) -> np.ndarray:
    return np.array([[np.nan if c["z"][f] is None else c["z"][f] for f in profile["features"]]
                     for c in profile["clusters"]], dtype=np.float64)


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _heatmap_png(profile: dict) -> bytes:
    """Segments x features coloured by z-score: a diverging colormap centred at 0."""
    import matplotlib
    from matplotlib.figure import Figure

    names, clusters = profile["features"], profile["clusters"]
    z = _z_matrix(profile)
    finite = np.isfinite(z)
    limit = max(1.0, float(np.abs(z[finite]).max())) if finite.any() else 1.0
    fig = Figure(figsize=(max(8.0, 0.8 * len(names) + 3.0), max(3.0, 0.5 * len(clusters) + 2.6)),
                 layout="constrained")
    ax = fig.subplots()
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(z), cmap=cmap, vmin=-limit, vmax=limit,
                      aspect="auto")
    for (row, col), value in np.ndenumerate(z):
        if np.isfinite(value):
            ax.text(col, row, f"{value:+.1f}", ha="center", va="center", fontsize=8,
                    color="white" if abs(value) > 0.6 * limit else "black")
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(clusters)),
                  [f"segment {c['cluster']} ({c['share']:.0%})" for c in clusters], fontsize=9)
    fig.colorbar(image, ax=ax, label="z-score of the segment mean", shrink=0.9)
    ax.set_title(f"{profile.get('title', '')}: segment mean against the population, "
                 f"in population standard deviations", fontsize=10)
    return _png(fig)


def _silhouette_png(profile: dict) -> bytes:
    """The classic diagram: each segment's silhouette values, sorted, as a horizontal band;
    the dashed line is the mean over the population."""
    import matplotlib
    from matplotlib.figure import Figure

    clusters = profile["clusters"]
    sil = profile["silhouette"]
    fig = Figure(figsize=(7.0, max(3.5, 0.45 * len(clusters) + 2.5)), layout="constrained")
    ax = fig.subplots()
    colors = matplotlib.colormaps["tab10" if len(clusters) <= 10 else "tab20"]
    gap = max(5, sil["sample_rows"] // 60)
    y, ticks, labels, lowest = gap, [], [], 0.0
    for i, c in enumerate(clusters):
        values = np.asarray(c["silhouette_values"], dtype=np.float64)
        if not len(values):
            continue
        ax.fill_betweenx(np.arange(y, y + len(values)), 0, values, color=colors(i % colors.N),
                         alpha=0.85, linewidth=0)
        ticks.append(y + len(values) / 2)
        labels.append(f"{c['cluster']}")
        lowest = min(lowest, float(values.min()))
        y += len(values) + gap
    ax.axvline(0.0, color="black", linewidth=0.8)
    if sil["mean"] is not None:
        ax.axvline(sil["mean"], color="red", linestyle="--",
                   label=f"mean silhouette {sil['mean']:.3f}")
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, sil.get("note", "no silhouette"), ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlim(min(-0.1, lowest - 0.05), 1.0)
    ax.set_ylim(0, max(y, 1))
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("silhouette value (preprocessed features)")
    ax.set_ylabel("segment")
    ax.set_title(f"{profile.get('title', '')}: silhouette per segment "
                 f"({sil['sample_rows']:,} rows, stratified)", fontsize=10)
    return _png(fig)


# ---------------------------------------------------------------- HTML

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0;font-size:.9em}"
    "td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right;white-space:nowrap}"
    "th{background:#f2f2f2}.l{text-align:left}.pos{color:#b2182b}.neg{color:#2166ac}"
    "img{max-width:100%;border:1px solid #eee}.scroll{overflow-x:auto}"
    ".cols{display:grid;grid-template-columns:1fr 1fr;gap:2em}.cols>section{min-width:0}"
    ".note{background:#fff6d8;padding:.5em;border-left:4px solid #e0b000}"
    "small{color:#666}")


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"{body}</body></html>")


def _num(value: float | None) -> str:
    """A value in its feature's own units, at a precision a person reads."""
    if value is None:
        return "&ndash;"
    if value == 0:
        return "0"
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 1:
        return f"{value:,.2f}"
    return f"{value:.3f}"


def _signed(feature: str, z: float) -> str:
    kind = "pos" if z > 0 else "neg"
    return f"<span class=\"{kind}\">{html.escape(feature)} {z:+.2f}</span>"


def _segments_table(profile: dict) -> str:
    rows = []
    for c in profile["clusters"]:
        top = ", ".join(_signed(t["feature"], t["z"]) for t in c["top_features"]) or "&ndash;"
        sil = "&ndash;" if c["silhouette"] is None else f"{c['silhouette']:.3f}"
        rows.append(f"<tr><td>{c['cluster']}</td><td>{c['rows']:,}</td>"
                    f"<td>{c['share']:.1%}</td><td>{sil}</td><td class=\"l\">{top}</td></tr>")
    return ("<table><tr><th>segment</th><th>rows</th><th>share</th><th>silhouette</th>"
            f"<th class=\"l\">most distinguishing features (z)</th></tr>{''.join(rows)}</table>")


def _values_table(profile: dict) -> str:
    clusters = profile["clusters"]
    head = "".join(f"<th colspan=\"2\">segment {c['cluster']}</th>" for c in clusters)
    sub = "<th>mean</th><th>median</th>" * (len(clusters) + 1)
    rows = []
    for f in profile["features"]:
        cells = [f"<td>{_num(profile['population']['mean'][f])}</td>"
                 f"<td>{_num(profile['population']['median'][f])}</td>"]
        for c in clusters:
            z = c["z"][f]
            hint = "" if z is None else f" title=\"z {z:+.2f}\""
            cells.append(f"<td{hint}>{_num(c['mean'][f])}</td><td>{_num(c['median'][f])}</td>")
        rows.append(f"<tr><th class=\"l\">{html.escape(f)}</th>{''.join(cells)}</tr>")
    return (f"<div class=\"scroll\"><table><tr><th class=\"l\" rowspan=\"2\">feature</th>"
            f"<th colspan=\"2\">population</th>{head}</tr><tr>{sub}</tr>{''.join(rows)}"
            f"</table></div>")


def _column(profile: dict, prefix: str) -> str:
    """One profile as HTML; ``prefix`` is the relative folder of its files from the page."""
    sil = profile["silhouette"]
    mean = "" if sil["mean"] is None else f", mean silhouette {sil['mean']:.3f}"
    about = (f"<p>{profile['k']} segments over {profile['sample_rows']:,} rows "
             f"(of {profile['population_rows']:,}; {html.escape(str(profile['source']))})"
             f"{mean}. Training run <code>{html.escape(str(profile.get('run_id')))}</code>, "
             f"data <code>{html.escape(str(profile.get('data_hash'))[:16])}</code>.</p>"
             "<p><small>Means and medians are in each feature's own units. z = (segment mean "
             "&minus; population mean) / population standard deviation.</small></p>")
    files = f"<a href=\"{prefix}{JSON_FILE}\">{JSON_FILE}</a>"
    if prefix:
        files += f" &middot; <a href=\"{prefix}{HTML_FILE}\">this profile alone</a>"
    files = f"<p><small>The figures: {files}</small></p>"
    return (f"{about}<h2>Segments</h2>{_segments_table(profile)}"
            f"<h2>What distinguishes each segment</h2>"
            f"<img src=\"{prefix}{HEATMAP_FILE}\" alt=\"heatmap of the segments' z-scores\">"
            f"<h2>Mean and median per feature</h2>{_values_table(profile)}"
            f"<h2>Silhouette per segment</h2>"
            f"<img src=\"{prefix}{SILHOUETTE_FILE}\" alt=\"silhouette diagram\">"
            "<p><small>Silhouette of each row on the preprocessed features, sorted within its "
            "segment; a stratified sample, so a band's height is the rows drawn from the segment, "
            "not its size. The mean weighs the rows back to the segments' sizes.</small></p>"
            f"{files}")


# ---------------------------------------------------------------- with the registry


def profiles_dir(settings: Settings) -> Path:
    return settings.reports_dir / "profiles"


def version_dir(settings: Settings, version: str) -> Path:
    return profiles_dir(settings) / f"version-{version}"


def artifact_uri(run_id: str, name: str = JSON_FILE) -> str:
    return f"runs:/{run_id}/{ARTIFACT_DIR}/{name}"


def registration_model(settings: Settings, run_id: str) -> SegmentModel:
    """The model registration takes from a run (``matched`` if evaluate wrote it, else the
    ``candidate``)."""
    with tempfile.TemporaryDirectory() as tmp:
        return SegmentModel.load(download_candidate(settings, run_id, Path(tmp),
                                                    prefer_matched=True))


def log_to_run(settings: Settings, run_id: str, folder: Path) -> None:
    """The profile's files as the run's artifacts under ``profile/``."""
    c = registry.client(settings)
    for name in FILES:
        c.log_artifact(run_id, str(folder / name), artifact_path=ARTIFACT_DIR)


def logged(settings: Settings, run_id: str) -> dict | None:
    """The profile logged with a run, or None."""
    import mlflow

    names = {a.path for a in registry.client(settings).list_artifacts(run_id, ARTIFACT_DIR)}
    if f"{ARTIFACT_DIR}/{JSON_FILE}" not in names:
        return None
    registry.configure(settings)
    return mlflow.artifacts.load_dict(artifact_uri(run_id))


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
    left = f"<p class=\"note\">{html.escape(note)}</p>" if note else ""
    if champ_folder is not None:
        left += _column(read(champ_folder), f"{quote(champ_folder.name)}/")
    theirs = read(candidate)
    body = (
        "<p>The segment ids of a candidate evaluated against the champion are matched to the "
        "champion's (on the holdout): the same id names the nearest segment.</p>"
        f"<div class=\"cols\"><section><h2>Champion: version {html.escape(version)}</h2>{left}"
        f"</section><section><h2>Candidate: {html.escape(theirs['title'])}</h2>"
        f"{_column(theirs, f'{quote(candidate.name)}/')}</section></div>")
    path = profiles_dir(settings) / f"{candidate.name}-vs-champion-{version}.html"
    title = f"Segment profiles: champion version {version} and candidate {theirs['title']}"
    return atomic_write_bytes(path, _page(title, body).encode())
