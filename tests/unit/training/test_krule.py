"""The K rule (pipeline.training.krule): each rule's choice and its reason on sweep rows, the
gap statistic and prediction strength on data whose K is known, and the seeding's swap
refinement, which lets the sweep find a segment of 0.4% of the rows."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from pipeline.engine.estimator import ArraySource, fit_sweep, lloyd, refine_by_swaps
from pipeline.engine.kernel import assign, kmeans_plusplus
from pipeline.training import krule
from pipeline.training.evaluation import K_RULE, K_RULE_NAME, choose_k


def _rows(sil: list[float], gap: list[float] | None = None, k0: int = 2) -> list[dict]:
    rows = []
    for i, s in enumerate(sil):
        row = {"k": k0 + i, "silhouette": s, "silhouette_lo": s - 0.01}
        if gap is not None:
            row.update(gap=gap[i], gap_sd=0.01)
        rows.append(row)
    return rows


def test_the_sweep_applies_the_rule_it_names():
    assert K_RULE_NAME in krule.RULES and K_RULE.startswith("The highest silhouette")
    rows = _rows([0.40, 0.55, 0.549], [1.0, 1.2, 1.3])
    assert choose_k(rows) == krule.RULES[K_RULE_NAME](rows)


def test_silhouette_decides_where_it_shows_structure():
    """The maximum, not the smallest K inside its interval: a small segment that moves the
    mean silhouette by less than the interval is kept (7 vs 8 here)."""
    rows = _rows([0.43, 0.54, 0.62, 0.67, 0.698, 0.712, 0.715, 0.41], k0=2)
    for row in rows:
        row.update(gap=1.0, gap_sd=0.01)
    k, why = krule.silhouette_or_gap(rows)
    assert k == 8 and "K=8 has the highest silhouette (0.715)" in why and ">= 0.25" in why
    assert krule.silhouette_ci_smallest(rows)[0] == 7  # the old rule merged it away


def test_the_gap_decides_where_segments_overlap():
    """Silhouettes below 0.25 ("no substantial structure") are flat across K; the gap's first
    K that is not beaten by the next one's lower bar decides."""
    rows = _rows([0.164, 0.179, 0.178, 0.174, 0.167, 0.152],
                 [1.266, 1.337, 1.367, 1.401, 1.414, 1.404])
    k, why = krule.silhouette_or_gap(rows)
    assert k == 6, why
    assert "below 0.25" in why and "gap statistic decides" in why and "K=6" in why


def test_the_rule_names_what_it_lacks():
    with pytest.raises(ValueError, match="no K has a finite silhouette"):
        choose_k(_rows([float("nan"), float("nan")]))
    k, why = krule.silhouette_or_gap(_rows([0.1, 0.2]))  # no gap computed
    assert k == 3 and "no gap statistic" in why


def test_gap_and_prediction_strength_find_separated_blobs():
    x, _ = make_blobs(3000, n_features=4, centers=4, cluster_std=0.6, random_state=3)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    ks = [2, 3, 4, 5, 6]
    fits = fit_sweep(ArraySource(x), ks, seed=0).fits
    figures = krule.k_figures(x, {k: fits[k].centroids for k in ks}, seed=0)
    rows = [{"k": k, **figures[k]} for k in ks]
    assert krule.gap_rule(rows)[0] == 4
    assert krule.prediction_strength_rule(rows)[0] == 4
    assert figures[4]["prediction_strength"] > 0.95 > figures[6]["prediction_strength"]


def _unequal(seed: int):
    rng = np.random.default_rng(seed)
    sizes = (2 ** np.arange(8)) * 20  # 20 .. 2,560 rows: the smallest is 0.4%
    centres = rng.normal(size=(8, 8))
    centres *= 30 / min(np.linalg.norm(a - b) for i, a in enumerate(centres)
                        for b in centres[i + 1:])
    x = np.concatenate([c + rng.normal(size=(n, 8)) for c, n in zip(centres, sizes, strict=True)])
    y = np.repeat(np.arange(8), sizes)
    return x.astype(np.float32), y


def test_swaps_free_the_seeding_from_a_merged_small_segment():
    """Seeding by d² rarely lands in a 0.4% segment; Lloyd then keeps two centres in the big
    one. The swap refinement moves one; the sweep's fit finds all 8 segments."""
    x, y = _unequal(0)
    plain, refined = [], []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        start = kmeans_plusplus(x, 8, rng)
        fit = lloyd(ArraySource(x), {(8, 0): start}, max_iter=50, tol=1e-6,
                    empty_cluster="farthest", sample=x, warn=False)[(8, 0)]
        plain.append(adjusted_rand_score(y, assign(x, fit.centroids)[0]))
        better = refine_by_swaps(x, None, start, np.random.default_rng(seed))
        refined.append(adjusted_rand_score(y, assign(x, better)[0]))
    assert min(plain) < 0.99, plain  # the failure the refinement is for
    assert min(refined) > 0.999, refined
    for init in ("k-means||", "k-means++"):
        fit = fit_sweep(ArraySource(x), [8], init=init, seed=1).fits[8]
        assert adjusted_rand_score(y, assign(x, fit.centroids)[0]) > 0.999, init
