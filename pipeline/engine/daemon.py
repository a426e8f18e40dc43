"""PySpark's worker daemon, with the engine imported before it forks any worker.

Spark starts one daemon per executor (``spark.python.daemon.module``), which forks a Python
worker per concurrent task. Stock workers import the engine on their first task: 1.7 s here
(pandas 0.9 s, the numba kernel 0.6 s), paid again by every new worker, e.g. the ones that
re-stage a lost executor's blocks on a survivor. Importing is not enough for the kernel: numba
compiles (or loads its cache) on the first call, which made the first step of every new Spark
application take 4-13.6 s on a cluster. The daemon calls it once on a tiny block, so the
workers it forks start with the kernel compiled.

A reused worker runs ``gc.collect()`` after every task (PySpark's daemon loop). With pandas,
pyarrow, numba and the engine loaded that is a full collection of ~170,000 objects: 83-107 ms
per task here, which made an empty pass of 8 blocks on ``local[2]`` take 0.54 s. Everything
the daemon imported lives as long as the worker, so it is frozen (``gc.freeze``) before the
first fork and the collections skip it: the same pass takes 0.15 s.
"""

import gc

import pyspark.worker  # noqa: F401  (each forked worker imports it; before the freeze below)
from pyspark import daemon

import pipeline.engine.spark  # noqa: F401  (imported for its side effect: warm workers)
from pipeline.engine.kernel import warm

warm()
gc.freeze()

if __name__ == "__main__":
    daemon.manager()
