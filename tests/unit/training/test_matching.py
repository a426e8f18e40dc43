import numpy as np

from pipeline.training.matching import match_clusters, relabel


def test_permuted_labels_are_matched_back():
    old = np.repeat([0, 1, 2], 50)
    new = np.repeat([2, 0, 1], 50)
    mapping, report = match_clusters(old, new, 3, 3)
    assert mapping.tolist() == [1, 2, 0]
    assert report["agreement"] == 1.0
    assert report["split"] == report["merged"] == report["appeared"] == report["disappeared"] == []


def test_split_and_appeared():
    old = np.repeat([0, 1], 100)
    new = np.concatenate([np.repeat(0, 100), np.repeat([1, 2], 50)])  # champion 1 split in two
    mapping, report = match_clusters(old, new, 2, 3)
    assert mapping[0] == 0 and sorted(mapping.tolist()) == [0, 1, 2]
    assert report["split"] == [{"champion_cluster": 1, "into": [1, 2]}]
    assert report["appeared"] == [2]
    assert report["agreement"] == 0.75


def test_merge_and_disappeared():
    old = np.repeat([0, 1, 2], 40)
    new = np.concatenate([np.repeat(0, 40), np.repeat(1, 80)])  # champion 1 and 2 merged
    mapping, report = match_clusters(old, new, 3, 2)
    assert report["merged"] == [{"challenger_cluster": int(mapping[1]), "from": [1, 2]}]
    assert len(report["disappeared"]) == 1


def test_relabel_orders_rows_by_stable_id():
    centroids = np.arange(6, dtype=np.float32).reshape(3, 2)
    rows, ids = relabel(centroids, np.array([4, 0, 2]))
    assert ids == [0, 2, 4]
    assert rows.tolist() == [[2, 3], [4, 5], [0, 1]]


def test_ids_with_gaps_and_no_overlap_pairs():
    # champion ids 0, 2, 5 (1, 3, 4 disappeared earlier); challenger cluster 2 shares no row
    old = np.array([0] * 10 + [2] * 10 + [5] * 10)
    new = np.array([1] * 10 + [0] * 10 + [0] * 10)
    mapping, report = match_clusters(old, new, [0, 2, 5], 3)
    assert mapping[1] == 0 and mapping[0] in (2, 5)
    assert mapping[2] == 6, "no shared row: a fresh id above every champion id"
    assert report["appeared"] == [6]
