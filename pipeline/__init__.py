"""K-means customer segmentation platform.

The package is a stack of layers, each importing only from the layers below it (the
import-linter contracts in ``pyproject.toml`` state the order and ``make lint`` checks them):

1. ``core``: settings, small I/O helpers (atomic write, file lock, clock)
2. ``model``: the artifact (centroids, preprocessing, checksums) and the standalone pyfunc
3. ``engine``: k-means over any source, in-process or Spark; imports nothing else from here
4. ``data``: lake, ingest and quarantine, Feast features, validation, sources, sample data;
   beside it ``registry``: MLflow runs, versions, aliases under a lock, audit trail
5. ``training``, then ``promotion`` (gates, drift review, registration)
6. ``monitoring``: windows of the prediction log against the champion, reports, actions
7. ``serving`` (the inference server: core, model, registry and the online features only) and
   ``rollout`` (a base, a controller and its backends)
8. ``orchestration``: what the DAG tasks call
9. ``devtools``: Airflow and the production profile on one machine, the replay harness; not
   product, nothing below imports it
10. ``demo``, ``cli`` and ``spark_entry``: the entry points

Nothing runs at import time. Imports sit at the top of each module, except the libraries in
:data:`LAZY_IMPORTS`: they are imported inside the functions that use them, so that the
scheduler parses the DAG files fast, the CLI starts fast, and the inference server (the
``serving`` extra) starts without Spark, Airflow, Great Expectations or Evidently installed.
"""

__version__ = "0.1.0"

#: Heavy or optional libraries that are imported lazily, where they are used (a test keeps every
#: other import at module top).
LAZY_IMPORTS = frozenset({"pyspark", "mlflow", "feast", "great_expectations", "evidently",
                          "airflow", "kubernetes", "matplotlib", "confluent_kafka"})

# Importing feast sets PROMETHEUS_MULTIPROC_DIR, and prometheus_client decides at its own import
# whether metric values live in memory or in mmap files under that folder. Deciding first keeps
# the inference server's metrics in memory (no files, no per-increment file lock) whatever
# imports feast later in the process.
import prometheus_client.values  # noqa: E402,F401
