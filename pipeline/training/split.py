"""The train/holdout split of a snapshot: by a hash of the customer id, so the same customer is
always on the same side, whatever the partitioning, on every run with the same seed."""

from __future__ import annotations

import numpy as np
import pandas as pd

HOLDOUT_SHARE = 0.2


def holdout_mask(customer_ids, seed: int, share: float = HOLDOUT_SHARE) -> np.ndarray:
    """Deterministic split by a hash of the id: the same customer is always on the same side."""
    ids = np.asarray(customer_ids, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = (ids + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)) * np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(29)
    return (h % np.uint64(10_000)).astype(np.float64) < share * 10_000


def read_split(snap, seed: int, *, holdout_rows: int = 20_000, train_rows: int = 200_000):
    """One pass over the snapshot: a seeded sample of training rows (for fitting the
    preprocessing) and a seeded sample of the holdout (for scoring: every row for the shares
    and distances, a sample of it stratified by cluster for the silhouette), split by
    customer id."""

    rng = np.random.default_rng(seed)
    train_parts, hold_parts = [], []
    for name in snap.files:
        frame = snap.read(name).to_pandas()
        hold = holdout_mask(frame["customer_id"].to_numpy(), seed)
        hold_parts.append(frame[hold])
        frame = frame[~hold]
        take = min(len(frame), max(1, train_rows // len(snap.files)))
        train_parts.append(frame.iloc[np.sort(rng.choice(len(frame), take, replace=False))])
    holdout = pd.concat(hold_parts, ignore_index=True)
    if len(holdout) > holdout_rows:
        holdout = holdout.sample(holdout_rows, random_state=seed).sort_values("customer_id")
    return pd.concat(train_parts, ignore_index=True), holdout.reset_index(drop=True)


class TrainingRows:
    """Row filter of the training blocks: the rows outside the holdout. Picklable, so it
    travels to the Spark tasks that stage the blocks; it lives here, in a module that imports
    only NumPy, pandas and pyarrow, because a Spark worker imports the module of every object
    it unpickles."""

    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self, frame: pd.DataFrame) -> np.ndarray:
        return ~holdout_mask(frame["customer_id"].to_numpy(), self.seed)
