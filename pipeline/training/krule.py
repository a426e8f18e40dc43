"""The candidate rules that choose K from a sweep, and the per-K figures they read.

Each rule takes the sweep's rows (one per K, ascending, with the holdout's cluster metrics of
:func:`pipeline.training.evaluation.cluster_metrics` and the figures of :func:`k_figures`) and
returns ``(k, why)``: the K and one sentence a reviewer can check against the sweep's table.
``benchmarks/k_rule_study.py`` scores every rule here on labelled data; the sweep uses the one
:data:`pipeline.training.evaluation.K_RULE_NAME` names.

The figures beyond the silhouette:

- **gap statistic** (Tibshirani, Walther and Hastie, 2001): ``E*[log W_k] - log W_k``, W_k the
  within-cluster sum of squares of a sample, E* over uniform reference sets in the sample's
  principal-component box;
- **prediction strength** (Tibshirani and Walther, 2005): cluster two halves of a sample; for
  each cluster of the test half, the share of its pairs that the training half's centroids also
  put together; the weakest cluster's share. It stays near 1 while every cluster of K is real.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.engine.estimator import ArraySource, lloyd
from pipeline.engine.kernel import assign, kmeans_plusplus

#: Prediction strength at or above which a K's clusters count as reproducible (the paper
#: suggests 0.8 to 0.9).
PS_THRESHOLD = 0.8
#: Reference sets of the gap statistic.
GAP_REFERENCES = 10
#: The best silhouette below which the data shows "no substantial structure" (Kaufman and
#: Rousseeuw, 1990) and :func:`silhouette_or_gap` lets the gap statistic decide.
STRUCTURE_SILHOUETTE = 0.25


def fit_sample(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 30) -> np.ndarray:
    """k-means++ and Lloyd on an in-memory sample (the reference sets, the halves, and the
    stability refits of :func:`pipeline.training.evaluation.cluster_metrics`)."""
    fits = lloyd(ArraySource(x), {(k, 0): kmeans_plusplus(x, k, rng)}, max_iter=iters,
                 tol=1e-4, empty_cluster="farthest", sample=x)
    return next(iter(fits.values())).centroids


def _within(x: np.ndarray, centroids: np.ndarray) -> float:
    return float(assign(x, centroids)[1].sum())


def gap_statistic(x: np.ndarray, centroids: dict[int, np.ndarray], *, seed: int,
                  references: int = GAP_REFERENCES) -> dict[int, tuple[float, float]]:
    """``{k: (gap, s_k)}`` for the sweep's fits ``centroids`` scored on the sample ``x``."""
    rng = np.random.default_rng([seed, 7])
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    rotated = (x - mean) @ vt.T
    low, high = rotated.min(axis=0), rotated.max(axis=0)
    refs = [(rng.uniform(low, high, size=rotated.shape) @ vt + mean).astype(np.float32)
            for _ in range(references)]
    xs = x.astype(np.float32)
    out = {}
    for k, c in centroids.items():
        log_w = np.log(max(_within(xs, c), 1e-300))
        ref_logs = np.array([np.log(max(_within(r, fit_sample(r, k, rng)), 1e-300)) for r in refs])
        out[k] = (float(ref_logs.mean() - log_w),
                  float(ref_logs.std() * np.sqrt(1 + 1 / references)))
    return out


def prediction_strength(x: np.ndarray, ks: list[int], *, seed: int,
                        splits: int = 3) -> dict[int, float]:
    """``{k: prediction strength}``, the mean over ``splits`` random halvings of ``x``."""
    x = np.asarray(x, dtype=np.float32)
    out = {k: 0.0 for k in ks}
    for s in range(splits):
        rng = np.random.default_rng([seed, 11, s])
        order = rng.permutation(len(x))
        train, test = x[order[: len(x) // 2]], x[order[len(x) // 2:]]
        for k in ks:
            test_labels = assign(test, fit_sample(test, k, rng))[0]
            by_train = assign(test, fit_sample(train, k, rng))[0]
            strengths = []
            for j in range(k):
                members = by_train[test_labels == j]
                n = len(members)
                if n < 2:
                    continue
                counts = np.bincount(members).astype(np.float64)
                strengths.append(float((counts * (counts - 1)).sum() / (n * (n - 1))))
            out[k] += min(strengths, default=1.0) / splits
    return out


def k_figures(x_sample: np.ndarray, centroids: dict[int, np.ndarray], *, seed: int,
              strength: bool = True, references: int = GAP_REFERENCES) -> dict:
    """Per K: ``gap``, ``gap_sd`` and (with ``strength``) ``prediction_strength`` on
    ``x_sample`` (holdout rows)."""
    gaps = gap_statistic(x_sample, centroids, seed=seed, references=references)
    ps = prediction_strength(x_sample, sorted(centroids), seed=seed) if strength else {}
    return {k: {"gap": gaps[k][0], "gap_sd": gaps[k][1],
                **({"prediction_strength": ps[k]} if strength else {})} for k in centroids}


# ------------------------------------------------------------------------------ the rules

Rows = list[dict]
Rule = Callable[[Rows], tuple[int, str]]


def _finite(rows: Rows, key: str) -> Rows:
    scored = [r for r in rows if np.isfinite(r.get(key, np.nan))]
    if not scored:
        raise ValueError(f"no K has a finite {key}; cannot choose K")
    return scored


def silhouette_ci_smallest(rows: Rows) -> tuple[int, str]:
    """The smallest K whose silhouette reaches the lower bound of the best K's 95% interval
    (the sweep's rule until 2026-12)."""
    scored = _finite(rows, "silhouette")
    best = max(scored, key=lambda r: r["silhouette"])
    close = [r for r in scored if r["silhouette"] >= best["silhouette_lo"]]
    k = int(min(close, key=lambda r: r["k"])["k"])
    return k, (f"K={best['k']} has the highest silhouette ({best['silhouette']:.3f}, 95% "
               f"interval from {best['silhouette_lo']:.3f}); K={k} is the smallest K at or above "
               "that lower bound")


def silhouette_max(rows: Rows) -> tuple[int, str]:
    """The K of the highest holdout silhouette."""
    best = max(_finite(rows, "silhouette"), key=lambda r: r["silhouette"])
    return int(best["k"]), f"K={best['k']} has the highest silhouette ({best['silhouette']:.3f})"


def gap_rule(rows: Rows) -> tuple[int, str]:
    """The smallest K whose gap is at least the next K's less its standard error (Tibshirani
    et al.)."""
    scored = _finite(rows, "gap")
    for here, after in zip(scored, scored[1:], strict=False):
        if here["gap"] >= after["gap"] - after["gap_sd"]:
            return int(here["k"]), (f"K={here['k']} is the smallest K whose gap "
                                    f"({here['gap']:.3f}) is at least K={after['k']}'s minus "
                                    f"its standard error ({after['gap'] - after['gap_sd']:.3f})")
    last = scored[-1]
    return int(last["k"]), f"the gap grows up to the largest K of the sweep ({last['k']})"


def prediction_strength_rule(rows: Rows) -> tuple[int, str]:
    """The largest K whose prediction strength is at least PS_THRESHOLD (Tibshirani and
    Walther)."""
    scored = _finite(rows, "prediction_strength")
    strong = [r for r in scored if r["prediction_strength"] >= PS_THRESHOLD]
    if not strong:
        best = max(scored, key=lambda r: r["prediction_strength"])
        return int(best["k"]), (f"no K reaches prediction strength {PS_THRESHOLD}; K={best['k']} "
                                f"has the highest ({best['prediction_strength']:.2f})")
    k = max(strong, key=lambda r: r["k"])
    return int(k["k"]), (f"K={k['k']} is the largest K whose clusters all reproduce across "
                         f"halves of the holdout (prediction strength "
                         f"{k['prediction_strength']:.2f} >= {PS_THRESHOLD})")


def stability_rule(rows: Rows, threshold: float = 0.9) -> tuple[int, str]:
    """The largest K whose bootstrap refits agree (mean adjusted Rand index >= 0.9)."""
    scored = _finite(rows, "stability")
    stable = [r for r in scored if r["stability"] >= threshold]
    if not stable:
        best = max(scored, key=lambda r: r["stability"])
        return int(best["k"]), (f"no K reaches stability {threshold}; K={best['k']} is the "
                                "most stable")
    k = max(stable, key=lambda r: r["k"])
    return int(k["k"]), (f"K={k['k']} is the largest K whose refits agree (stability "
                         f"{k['stability']:.2f} >= {threshold})")


def strength_then_silhouette(rows: Rows) -> tuple[int, str]:
    """Among the K whose clusters all reproduce, the highest silhouette."""
    scored = _finite(rows, "silhouette")
    strong = [r for r in scored if r.get("prediction_strength", 0) >= PS_THRESHOLD]
    if not strong:
        return silhouette_max(rows)
    best = max(strong, key=lambda r: r["silhouette"])
    return int(best["k"]), (f"of the K whose clusters all reproduce across halves of the "
                            f"holdout (prediction strength >= {PS_THRESHOLD}: "
                            f"{', '.join(str(r['k']) for r in strong)}), K={best['k']} has the "
                            f"highest silhouette ({best['silhouette']:.3f})")


def gap_within_strength(rows: Rows) -> tuple[int, str]:
    """The gap rule's K, unless a larger K's clusters all reproduce and its gap is higher."""
    k_gap, why = gap_rule(rows)
    scored = _finite(rows, "gap")
    larger = [r for r in scored if r["k"] > k_gap
              and r.get("prediction_strength", 0) >= PS_THRESHOLD
              and r["gap"] > next(x["gap"] for x in scored if x["k"] == k_gap)]
    if not larger:
        return k_gap, why
    k = max(larger, key=lambda r: r["gap"])
    return int(k["k"]), (f"{why}; K={k['k']} has a higher gap ({k['gap']:.3f}) and its clusters "
                         f"all reproduce (prediction strength {k['prediction_strength']:.2f})")


def silhouette_or_gap(rows: Rows) -> tuple[int, str]:
    """The highest silhouette where it shows structure (best >= 0.25), else the gap rule.

    Below 0.25 a silhouette means "no substantial structure" (Kaufman and Rousseeuw, 1990):
    segments that overlap, whose silhouettes are low and flat across K and rank K no better
    than noise, while the gap statistic, made for that case, finds them. Above it the
    silhouette is right more often than any other rule of the study (benchmarks/KRULE.md);
    its maximum, not the smallest K inside its interval, so that a small segment, which moves
    the mean silhouette little, is not merged away.
    """
    best = max(_finite(rows, "silhouette"), key=lambda r: r["silhouette"])
    if best["silhouette"] >= STRUCTURE_SILHOUETTE:
        k, why = silhouette_max(rows)
        return k, f"{why}, which shows structure (>= {STRUCTURE_SILHOUETTE})"
    if not any(np.isfinite(r.get("gap", np.nan)) for r in rows):
        k, why = silhouette_max(rows)
        return k, f"{why}; no gap statistic was computed to judge weak structure by"
    k, why = gap_rule(rows)
    return k, (f"the highest silhouette ({best['silhouette']:.3f}, K={best['k']}) is below "
               f"{STRUCTURE_SILHOUETTE}: segments overlap, so the gap statistic decides: {why}")


#: name -> rule. The study scores them all; the sweep applies K_RULE_NAME's.
RULES: dict[str, Rule] = {
    "silhouette_ci_smallest": silhouette_ci_smallest,
    "silhouette_max": silhouette_max,
    "gap": gap_rule,
    "prediction_strength": prediction_strength_rule,
    "stability": stability_rule,
    "strength_then_silhouette": strength_then_silhouette,
    "gap_within_strength": gap_within_strength,
    "silhouette_or_gap": silhouette_or_gap,
}
