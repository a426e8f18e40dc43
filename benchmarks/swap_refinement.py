"""The seeding's swap refinement, on and off: how well the sweep's fit at the true K recovers
the labels (adjusted Rand index) on the K study's data, and the final inertia.

    python benchmarks/swap_refinement.py   # prints a Markdown table; KRULE.md quotes it
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from unittest import mock

from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from k_rule_study import make  # noqa: E402

from pipeline.engine import estimator  # noqa: E402
from pipeline.engine.kernel import assign  # noqa: E402


def _plain(points, weights, centers, rng, **_):
    """What the seeding did before: Lloyd on the sample, no swaps."""
    return estimator.lloyd(estimator.ArraySource(points, weights), {(len(centers), 0): centers},
                           max_iter=30, tol=1e-6, empty_cluster="farthest", sample=points,
                           sample_weight=weights, warn=False)[(len(centers), 0)].centroids


def main() -> None:
    print("| data (true K) | init | ARI without swaps | ARI with swaps | inertia with / without |")
    print("| --- | --- | --- | --- | ---: |")
    for kind in ("unequal", "varied", "anisotropic", "overlapping", "demo"):
        for init in ("k-means||", "k-means++"):
            ari = {False: [], True: []}
            ratio = []
            for seed in range(5):
                x, y, k = make(kind, seed, 30_000)
                inertia = {}
                for swaps in (False, True):
                    patch = (mock.patch.object(estimator, "refine_by_swaps", _plain)
                             if not swaps else mock.patch.object(estimator, "SWAP_TRIALS", 8))
                    with patch:
                        fit = estimator.fit_sweep(estimator.ArraySource(x), [k], init=init,
                                                  seed=seed, max_iter=50).fits[k]
                    ari[swaps].append(adjusted_rand_score(y, assign(x, fit.centroids)[0]))
                    inertia[swaps] = fit.inertia
                ratio.append(inertia[True] / inertia[False])
            fmt = lambda v: ", ".join(f"{a:.2f}" for a in v)  # noqa: E731
            print(f"| {kind} ({k}) | {init} | {fmt(ari[False])} | {fmt(ari[True])} | "
                  f"{statistics.median(ratio):.3f} (max {max(ratio):.3f}) |", flush=True)


if __name__ == "__main__":
    main()
