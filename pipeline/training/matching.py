"""Stable cluster ids across retrains.

A challenger's clusters are matched to the champion's by the Hungarian algorithm on the overlap
of their assignments over the same holdout, so that segment 3 stays segment 3. The report says
which champion clusters split, which merged, which appeared and which disappeared.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

SHARE = 0.2  # a cluster "takes part" in another when it holds at least this share of it


def match_clusters(champion_labels: np.ndarray, challenger_labels: np.ndarray,
                   champion_ids: int | np.ndarray | list[int],
                   k_challenger: int) -> tuple[np.ndarray, dict]:
    """Map each challenger cluster (by row position) to a stable id and describe the changes.

    ``champion_labels`` are the champion's stable ids of the holdout rows, ``champion_ids`` all
    of its ids (an int ``k`` means ``range(k)``), ``challenger_labels`` the challenger's row
    positions. Returns ``(mapping, report)`` where ``mapping[position] = stable_id``: matched
    clusters take the champion's id; clusters that share no row with any champion cluster left
    take fresh ids above every champion id.

    Examples
    --------
    >>> m, r = match_clusters(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]), 2, 2)
    >>> m.tolist(), r["agreement"]
    ([1, 0], 1.0)
    """

    ids = (np.arange(champion_ids) if isinstance(champion_ids, int | np.integer)
           else np.asarray(champion_ids))
    k_champion = len(ids)
    column = {int(v): j for j, v in enumerate(ids)}
    old = np.array([column[int(v)] for v in np.asarray(champion_labels)], dtype=np.int64)
    new = np.asarray(challenger_labels)
    table = np.zeros((k_challenger, k_champion), dtype=np.int64)
    np.add.at(table, (new, old), 1)
    rows, cols = linear_sum_assignment(-table)
    overlap = table[rows, cols] > 0  # a pair with no shared row is no match
    rows, cols = rows[overlap], cols[overlap]
    mapping = np.full(k_challenger, -1, dtype=np.int64)
    mapping[rows] = ids[cols]
    fresh = iter(range(int(ids.max()) + 1, int(ids.max()) + 1 + k_challenger))
    for unmatched in np.flatnonzero(mapping < 0):
        mapping[unmatched] = next(fresh)
    matched = table[rows, cols].sum()
    old_sizes = table.sum(axis=0)
    new_sizes = table.sum(axis=1)
    splits, merges = [], []
    for j in range(k_champion):
        parts = [int(mapping[i]) for i in range(k_challenger)
                 if old_sizes[j] and table[i, j] >= SHARE * old_sizes[j]]
        if len(parts) > 1:
            splits.append({"champion_cluster": int(ids[j]), "into": sorted(parts)})
    for i in range(k_challenger):
        parts = [int(ids[j]) for j in range(k_champion)
                 if old_sizes[j] and table[i, j] >= SHARE * old_sizes[j]]
        if len(parts) > 1:
            merges.append({"challenger_cluster": int(mapping[i]), "from": parts})
    report = {
        "agreement": float(matched / max(len(new), 1)),
        "mapping": {str(i): int(m) for i, m in enumerate(mapping)},
        "split": splits,
        "merged": merges,
        "appeared": sorted(int(mapping[i]) for i in range(k_challenger)
                           if mapping[i] > ids.max() or new_sizes[i] == 0),
        "disappeared": sorted(int(ids[j]) for j in set(range(k_champion)) - set(cols.tolist())),
    }
    return mapping, report


def relabel(centroids: np.ndarray, mapping: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Centroids ordered by stable id, and the stable id of each row.

    Ids may have gaps (a champion cluster that disappeared keeps its number unused), so the
    model stores the ids next to the centroids instead of relying on row positions.
    """
    order = np.argsort(mapping, kind="stable")
    return np.asarray(centroids)[order], [int(i) for i in np.asarray(mapping)[order]]
