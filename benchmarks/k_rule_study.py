"""Which rule chooses K right most often: every rule of pipeline.training.krule on labelled data.

Data kinds (true K in brackets), each drawn with 5 seeds:

- ``unequal`` [8]: 16-d blobs of sizes 1:2:4:...:128 (the smallest is 0.4% of the rows);
- ``anisotropic`` [5]: 8-d blobs, each stretched by its own random linear map;
- ``overlapping`` [6]: 8-d blobs whose centres lie about 2.5 standard deviations apart;
- ``varied`` [6]: 10-d blobs of unequal sizes (1:1:2:3:5:8) and spreads (0.5 to 2);
- ``equal`` [4]: 10-d equal, well separated blobs (the easy control);
- ``iris`` [3]: the three species, standardised;
- ``demo`` [5]: the demo's customer generator, preprocessed as training does.

Per data set and seed, the sweep's own machinery runs on a training/holdout split: the engine
fits every K of 2..12 (``fit_sweep``, the sweep's defaults: k-means||, one init), the holdout
gets the sweep's cluster metrics, and :func:`pipeline.training.krule.k_figures` adds the gap
statistic and prediction strength. Every rule is then applied to the same rows.

    python benchmarks/k_rule_study.py [--seeds 5] [--rows 30000]

Writes ``benchmarks/results/k_rule_study.json`` and ``benchmarks/KRULE.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from sklearn.metrics import adjusted_rand_score  # noqa: E402

from pipeline.core.settings import FEATURE_NAMES  # noqa: E402
from pipeline.engine.estimator import ArraySource, fit_sweep  # noqa: E402
from pipeline.engine.kernel import assign  # noqa: E402
from pipeline.model.preprocessing import LOG_FEATURES, Preprocessor  # noqa: E402
from pipeline.training.evaluation import K_RULE_NAME, cluster_metrics  # noqa: E402
from pipeline.training.krule import RULES, k_figures  # noqa: E402

KS = list(range(2, 13))
HOLDOUT = 0.2
SAMPLE = 4000  # holdout rows the gap and prediction strength read (as the sweep)


def _blobs(rng, sizes, centres, spreads=None, maps=None):
    parts, labels = [], []
    for j, n in enumerate(sizes):
        z = rng.normal(size=(n, centres.shape[1]))
        if maps is not None:
            z = z @ maps[j]
        if spreads is not None:
            z = z * spreads[j]
        parts.append(centres[j] + z)
        labels.append(np.full(n, j))
    return np.concatenate(parts), np.concatenate(labels)


def _separated(rng, k, d, distance):
    """``k`` centres in ``d`` dimensions, every pair at least ``distance`` apart."""
    while True:
        c = rng.normal(size=(k, d))
        c *= distance / np.min([np.linalg.norm(a - b) for i, a in enumerate(c) for b in c[i + 1:]])
        if np.isfinite(c).all():
            return c


def make(kind: str, seed: int, rows: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``(x, labels, true K)``, x standardised (demo: preprocessed)."""
    rng = np.random.default_rng([seed, zlib.crc32(kind.encode())])  # not hash(): salted
    if kind == "unequal":
        share = 2.0 ** np.arange(8)
        sizes = np.maximum((rows * share / share.sum()).astype(int), 20)
        x, y = _blobs(rng, sizes, _separated(rng, 8, 16, 24.0))
    elif kind == "anisotropic":
        maps = [np.linalg.qr(rng.normal(size=(8, 8)))[0] @ np.diag(rng.uniform(0.3, 2.0, 8))
                for _ in range(5)]
        x, y = _blobs(rng, [rows // 5] * 5, _separated(rng, 5, 8, 9.0), maps=maps)
    elif kind == "overlapping":
        x, y = _blobs(rng, [rows // 6] * 6, _separated(rng, 6, 8, 2.5))
    elif kind == "varied":
        share = np.array([1, 1, 2, 3, 5, 8], dtype=float)
        sizes = (rows * share / share.sum()).astype(int)
        spreads = np.array([0.5, 2.0, 1.0, 0.7, 1.5, 1.0])
        x, y = _blobs(rng, sizes, _separated(rng, 6, 10, 7.0), spreads=spreads)
    elif kind == "equal":
        x, y = _blobs(rng, [rows // 4] * 4, _separated(rng, 4, 10, 8.0))
    elif kind == "iris":
        from sklearn.datasets import load_iris
        data = load_iris()
        x, y = data.data, data.target
    elif kind == "demo":
        from pipeline.data.datagen import generate_customers, period_rows
        customers = generate_customers(rows, rng)
        frame = period_rows(customers, dt.date(2026, 1, 1), period=0, seed=seed,
                            active_share=1.0)
        pre = Preprocessor.fit(frame, FEATURE_NAMES, log_features=LOG_FEATURES)
        x = pre.transform(frame)
        y = np.unique(frame["segment_truth"].to_numpy(), return_inverse=True)[1]
        return x.astype(np.float32), y, 5
    else:
        raise ValueError(kind)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return x.astype(np.float32), y, int(y.max() + 1)


KINDS = ("unequal", "anisotropic", "overlapping", "varied", "equal", "iris", "demo")


def study_one(kind: str, seed: int, rows: int) -> dict:
    x, y, true_k = make(kind, seed, rows)
    rng = np.random.default_rng(seed)
    hold = rng.random(len(x)) < HOLDOUT
    train, x_hold = (x, x) if len(x) < 1000 else (x[~hold], x[hold])  # iris: 150 rows
    t0 = time.perf_counter()
    fits = fit_sweep(ArraySource(train), KS, seed=seed, max_iter=50)
    metrics = {k: cluster_metrics(x_hold, fits.fits[k].centroids, seed=seed) for k in KS}
    sample = x_hold if len(x_hold) <= SAMPLE else x_hold[rng.choice(len(x_hold), SAMPLE,
                                                                    replace=False)]
    extra = k_figures(sample, {k: fits.fits[k].centroids for k in KS}, seed=seed)
    rows_ = [{**metrics[k], **extra[k]} for k in KS]
    seconds = time.perf_counter() - t0
    chosen = {name: rule(rows_)[0] for name, rule in RULES.items()}
    ari_true = adjusted_rand_score(y[hold] if len(x) >= 1000 else y,
                                   assign(x_hold, fits.fits[true_k].centroids)[0])
    return {"kind": kind, "seed": seed, "true_k": true_k, "chosen": chosen,
            "ari_of_true_k_fit": float(ari_true), "seconds": seconds,
            "figures": [{k: r[k] for k in ("k", "silhouette", "silhouette_lo", "stability",
                                            "gap", "gap_sd", "prediction_strength")}
                        for r in rows_]}


def render(result: dict) -> str:
    runs = result["runs"]
    names = list(RULES)
    lines = ["# Which rule chooses K", "",
             f"`python benchmarks/k_rule_study.py` on {result['date']}, {result['machine']}; "
             f"{result['seeds']} seeds per kind, {result['rows']:,} rows per synthetic set "
             "(80% fitted, 20% scored), K from 2 to 12, the sweep's defaults (k-means||, one "
             "initialisation). Each cell: the K chosen for seeds 0, 1, ...; **bold** where all "
             "are right. The rule the sweep uses is marked.", "",
             "| data (true K) | " + " | ".join(
                 f"{n}{' (used)' if n == result['used'] else ''}" for n in names) + " |",
             "| --- |" + " --- |" * len(names)]
    score = {n: 0 for n in names}
    for kind in dict.fromkeys(r["kind"] for r in runs):
        mine = [r for r in runs if r["kind"] == kind]
        true_k = mine[0]["true_k"]
        cells = []
        for n in names:
            ks = [r["chosen"][n] for r in mine]
            hits = sum(k == true_k for k in ks)
            score[n] += hits
            cell = ", ".join(map(str, ks))
            cells.append(f"**{cell}**" if hits == len(ks) else cell)
        lines.append(f"| {kind} ({true_k}) | " + " | ".join(cells) + " |")
    total = len(runs)
    lines.append("| **right** | " + " | ".join(f"**{score[n]}/{total}**" for n in names) + " |")
    kinds = dict.fromkeys(r["kind"] for r in runs)
    ari = {kind: np.median([r["ari_of_true_k_fit"] for r in runs if r["kind"] == kind])
           for kind in kinds}
    lines += ["", "How well the sweep's fit at the true K recovers the labels (adjusted Rand "
              "index, median over seeds): " + ", ".join(f"{k} {v:.2f}" for k, v in ari.items())
              + ".", "",
              "The rules (`pipeline/training/krule.py`):", ""]
    for n, rule in RULES.items():
        doc = (rule.__doc__ or "").strip().splitlines()
        lines.append(f"- `{n}`" + (f": {doc[0]}" if doc else ""))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--kinds", nargs="*", default=list(KINDS))
    parser.add_argument("--report", type=Path, help="rewrite KRULE.md from this JSON")
    args = parser.parse_args()
    out = HERE / "results" / "k_rule_study.json"
    if args.report:
        _write(render(json.loads(args.report.read_text())))
        return
    runs = []
    for kind in args.kinds:
        for seed in range(args.seeds):
            run = study_one(kind, seed, args.rows)
            runs.append(run)
            print(f"{kind} seed {seed} (true {run['true_k']}): {run['chosen']} "
                  f"[{run['seconds']:.1f} s]", flush=True)
    result = {"date": dt.date.today().isoformat(), "machine": f"{os.cpu_count()} cores",
              "seeds": args.seeds, "rows": args.rows, "used": K_RULE_NAME, "runs": runs}
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    _write(render(result))
    print(render(result))


def _write(table: str) -> None:
    """KRULE.md: the table, then the reading of it kept from the file (from ``## What``)."""
    page = HERE / "KRULE.md"
    old = page.read_text() if page.exists() else ""
    kept = old[old.index(ANALYSIS):] if ANALYSIS in old else ""
    page.write_text(table + ("\n" + kept if kept else ""))


ANALYSIS = "## What the study says"


if __name__ == "__main__":
    main()
