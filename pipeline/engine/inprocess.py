"""Staged blocks iterated in-process: the local engine over the same blocks as Spark."""

from __future__ import annotations

import numpy as np

from pipeline.engine.estimator import ArraySource
from pipeline.engine.staging import BlockSpec, load_staged


def in_process_source(spec: BlockSpec) -> ArraySource:
    """The spec's blocks staged here and iterated in-process: an :class:`ArraySource` with the
    rows' ids, so it draws the same samples and k-means|| candidates, and fits the same
    centroids, as a :class:`~pipeline.engine.spark.SparkBlockSource` over the same spec.

    Examples
    --------
    >>> source = in_process_source(parquet_spec("data/", ["a", "b"], "/tmp/stage"))
    ... # doctest: +SKIP
    >>> source.n_rows  # doctest: +SKIP
    1000
    """
    blocks = [load_staged(spec, i) for i in range(len(spec.files))]
    weights = np.concatenate([b.weights for b in blocks]) if spec.weight_column else None
    return ArraySource(np.concatenate([b.x for b in blocks]), weights,
                       ids=np.concatenate([b.ids for b in blocks]))
