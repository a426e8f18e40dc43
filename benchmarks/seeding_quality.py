"""Seeding quality (issue 11): the engine's inertia over scikit-learn's, per seed and init.

    python benchmarks/seeding_quality.py --rows 200000 --rows 2000000 --seeds 5

Data: ``make_blobs(rows, 16, centers=8, random_state=0)`` in float32. For each seed ``s`` the
engine fits ``KMeans(8, init=..., random_state=s)`` in-process and scikit-learn
``KMeans(8, random_state=s, n_init=1)`` (greedy k-means++); the table is the ratio of the two
inertias (1.00 = the same optimum). ``--json`` writes the raw figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans as SkKMeans
from sklearn.datasets import make_blobs

from pipeline.engine.estimator import KMeans


def measure(rows: int, seeds: int, inits: list[str], k: int = 8) -> list[dict]:
    x, _ = make_blobs(rows, 16, centers=k, random_state=0)
    x = x.astype(np.float32)
    out = []
    for s in range(seeds):
        t = time.perf_counter()
        sk = SkKMeans(k, random_state=s, n_init=1).fit(x).inertia_
        sk_s = time.perf_counter() - t
        for init in inits:
            t = time.perf_counter()
            ours = KMeans(k, init=init, random_state=s).fit(x).inertia_
            row = {"rows": rows, "seed": s, "init": init, "ours": float(ours),
                   "sklearn": float(sk), "ratio": float(ours / sk),
                   "seconds": time.perf_counter() - t, "sklearn_seconds": sk_s}
            out.append(row)
            print(f"{rows:>9,} seed {s} {init:<10} ratio {row['ratio']:.4f} "
                  f"({row['seconds']:.1f} s; scikit-learn {sk_s:.1f} s)", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, action="append")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--init", action="append", choices=["k-means||", "k-means++"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = []
    for rows in args.rows or [200_000]:
        results += measure(rows, args.seeds, args.init or ["k-means||", "k-means++"])
    print("\n| rows | init | " + " | ".join(f"seed {s}" for s in range(args.seeds)) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in range(args.seeds)) + " |")
    for rows in sorted({r["rows"] for r in results}):
        for init in dict.fromkeys(r["init"] for r in results):
            ratios = [r["ratio"] for r in results if r["rows"] == rows and r["init"] == init]
            print(f"| {rows:,} | {init} | " + " | ".join(f"{v:.3f}" for v in ratios) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
