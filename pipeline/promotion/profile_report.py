"""The renderings of a segment profile (:mod:`pipeline.promotion.profiles`): the heatmap and
the silhouette diagram as PNG, the profile's page and the side-by-side page as HTML. Pure: a
profile's figures (its JSON) in, bytes or text out; the folder's layout is named here because
the pages link to its files.
"""

from __future__ import annotations

import html
import io
from typing import Any
from urllib.parse import quote

import numpy as np

JSON_FILE = "profile.json"
HTML_FILE = "profile.html"
HEATMAP_FILE = "heatmap.png"
SILHOUETTE_FILE = "silhouette.png"
FILES = (JSON_FILE, HTML_FILE, HEATMAP_FILE, SILHOUETTE_FILE)


def profile_page(profile: dict) -> str:
    """One profile's page (its ``title`` set), beside its files in its folder."""
    return _page(f"Segment profile: {profile['title']}", _column(profile, ""))


def side_by_side_page(champion: dict | None, champion_folder: str, note: str | None,
                      version: str, candidate: dict, candidate_folder: str) -> str:
    """The champion's profile (or the ``note`` saying why there is none) and the candidate's
    next to each other; the folders are relative to the page."""
    left = f"<p class=\"note\">{html.escape(note)}</p>" if note else ""
    if champion is not None:
        left += _column(champion, f"{quote(champion_folder)}/")
    body = (
        "<p>The segment ids of a candidate evaluated against the champion are matched to the "
        "champion's (on the holdout): the same id names the nearest segment.</p>"
        f"<div class=\"cols\"><section><h2>Champion: version {html.escape(version)}</h2>{left}"
        f"</section><section><h2>Candidate: {html.escape(candidate['title'])}</h2>"
        f"{_column(candidate, f'{quote(candidate_folder)}/')}</section></div>")
    title = f"Segment profiles: champion version {version} and candidate {candidate['title']}"
    return _page(title, body)


def _z_matrix(profile: dict) -> np.ndarray:
    return np.array([[np.nan if c["z"][f] is None else c["z"][f] for f in profile["features"]]
                     for c in profile["clusters"]], dtype=np.float64)


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def heatmap_png(profile: dict) -> bytes:
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


def silhouette_png(profile: dict) -> bytes:
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

