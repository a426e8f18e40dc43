"""The k-means engine: one kernel, run in-process or as one Spark job per iteration.

``pipeline.engine.estimator`` (the scikit-learn estimator and the sweep), ``.kernel`` (the BLAS
and numba kernel), ``.session`` (the SparkSession), ``.snapshot`` (a snapshot's Parquet files),
``.staging`` (blocks staged per executor) and ``.spark`` (the block source: one job per
iteration). This file imports none of them: Spark's Python workers import ``.spark`` (with
``.staging`` and ``.snapshot``) and ``.kernel`` only, and every task a worker runs after
importing scikit-learn cost about 30 ms more here (PySpark 4.3, measured with a no-op job),
which a job per iteration pays every iteration.
"""
