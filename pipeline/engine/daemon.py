"""PySpark's worker daemon, with the engine imported before it forks any worker.

Spark starts one daemon per executor (``spark.python.daemon.module``), which forks a Python
worker per concurrent task. Stock workers import the engine on their first task: 1.7 s here
(pandas 0.9 s, the numba kernel 0.6 s), paid again by every new worker, e.g. the ones that
re-stage a lost executor's blocks on a survivor. Forked from this daemon, they start warm.
"""

from pyspark import daemon

import pipeline.engine.spark  # noqa: F401  (imported for its side effect: warm workers)

if __name__ == "__main__":
    daemon.manager()
