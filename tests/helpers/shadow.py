"""The streaming shadow's test data: a champion fitted in-process on the generator's customers,
their rows of a period, and the instant the shadow's stream starts (the tests' calendar)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from tests.helpers import clock

#: When the shadow's stream starts: midnight of the sample lake's first day. The shadow, its
#: history and the monitoring window are given every ``now``; none reads the clock against it.
T0: dt.datetime = clock.BEGIN
#: The day the rows are dated (their values do not depend on it).
DAY: dt.date = T0.date()


def fit_champion(k: int = 5, seed: int = 5):
    """A champion fitted in-process on the generator's customers: (model, customers)."""
    from sklearn.cluster import KMeans

    from pipeline.core.settings import FEATURE_NAMES
    from pipeline.data.datagen import generate_customers, period_rows
    from pipeline.model.artifact import SegmentModel
    from pipeline.model.preprocessing import LOG_FEATURES, Preprocessor

    # 3,000 customers x 3 periods (5,400 rows): fewer, and a k-means solution of the sample
    # may not be one of the population, which the shadow then moves to even on stationary data
    customers = generate_customers(3000, np.random.default_rng(seed))
    rows = pd.concat([period_rows(customers, DAY, period=p, seed=seed) for p in range(3)])
    pre = Preprocessor.fit(rows, FEATURE_NAMES, log_features=LOG_FEATURES)
    x = pre.transform(rows)
    km = KMeans(k, n_init=3, random_state=0).fit(x)
    distance = np.linalg.norm(x - km.cluster_centers_[km.labels_], axis=1)
    meta = {"metrics": {"mean_distance": float(distance.mean())},
            "cluster_shares": (np.bincount(km.labels_, minlength=k) / len(x)).tolist(),
            "cluster_ids": list(range(10, 10 + k))}
    return SegmentModel(km.cluster_centers_, pre, meta), customers


def stream_rows(customers, period, drift=None):
    """The rows of ``customers`` in ``period`` (seed 5), with ``drift`` applied."""
    from pipeline.data import datagen

    return datagen.period_rows(customers, DAY, period=period, seed=5, drift=drift)
