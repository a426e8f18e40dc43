"""Stable cluster ids across retrains.

A challenger's clusters are matched to the champion's by the Hungarian algorithm on the overlap
of their assignments over the same holdout, so that segment 3 stays segment 3. The report says
which champion clusters split, which merged, which appeared and which disappeared.
"""

from __future__ import annotations

import numpy as np

SHARE = 0.2  # a cluster "takes part" in another when it holds at least this share of it


def match_clusters(champion_labels: np.ndarray, challenger_labels: np.ndarray, k_champion: int,
                   k_challenger: int) -> tuple[np.ndarray, dict]:
    """Map each challenger id to a stable id and describe the changes.

    Returns ``(mapping, report)`` where ``mapping[new_id] = stable_id``: matched clusters take
    the champion's id, unmatched challenger clusters take fresh ids from ``k_champion`` up.

    Examples
    --------
    >>> m, r = match_clusters(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]), 2, 2)
    >>> m.tolist(), r["agreement"]
    ([1, 0], 1.0)
    """
    from scipy.optimize import linear_sum_assignment

    old = np.asarray(champion_labels)
    new = np.asarray(challenger_labels)
    table = np.zeros((k_challenger, k_champion), dtype=np.int64)
    np.add.at(table, (new, old), 1)
    rows, cols = linear_sum_assignment(-table)
    mapping = np.full(k_challenger, -1, dtype=np.int64)
    mapping[rows] = cols
    fresh = iter(range(k_champion, k_champion + k_challenger))
    for i in np.flatnonzero(mapping < 0):
        mapping[i] = next(fresh)
    matched = table[rows, cols].sum()
    old_sizes = table.sum(axis=0)
    new_sizes = table.sum(axis=1)
    splits, merges = [], []
    for j in range(k_champion):
        parts = [int(mapping[i]) for i in range(k_challenger)
                 if old_sizes[j] and table[i, j] >= SHARE * old_sizes[j]]
        if len(parts) > 1:
            splits.append({"champion_cluster": j, "into": sorted(parts)})
    for i in range(k_challenger):
        parts = [j for j in range(k_champion)
                 if old_sizes[j] and table[i, j] >= SHARE * old_sizes[j]]
        if len(parts) > 1:
            merges.append({"challenger_cluster": int(mapping[i]), "from": parts})
    report = {
        "agreement": float(matched / max(len(new), 1)),
        "mapping": {str(i): int(m) for i, m in enumerate(mapping)},
        "split": splits,
        "merged": merges,
        "appeared": sorted(int(mapping[i]) for i in range(k_challenger)
                           if mapping[i] >= k_champion or new_sizes[i] == 0),
        "disappeared": sorted(int(j) for j in set(range(k_champion)) - set(cols.tolist())),
    }
    return mapping, report


def relabel(centroids: np.ndarray, mapping: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Centroids ordered by stable id, and the stable id of each row.

    Ids may have gaps (a champion cluster that disappeared keeps its number unused), so the
    model stores the ids next to the centroids instead of relying on row positions.
    """
    order = np.argsort(mapping, kind="stable")
    return np.asarray(centroids)[order], [int(i) for i in np.asarray(mapping)[order]]
