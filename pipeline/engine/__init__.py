"""The k-means engine: one kernel, run in-process or as one Spark job per iteration."""

from pipeline.engine.estimator import KMeans, SweepResult, fit_sweep
from pipeline.engine.kernel import assign, partial_stats

__all__ = ["KMeans", "SweepResult", "assign", "fit_sweep", "partial_stats"]
