"""K-means customer segmentation platform.

The package is a stack of layers, each importing only from the layers below it (the
import-linter contracts in ``pyproject.toml`` state the order and ``make test`` checks them):

1. ``core``: settings, small I/O helpers (atomic write, file lock, clock)
2. ``model``: the artifact (centroids, preprocessing, checksums) and the standalone pyfunc
3. ``engine``: k-means over any source, in-process or Spark; imports nothing else from here
4. ``data``: lake, ingest and quarantine, Feast features, validation, sample data
5. ``registry``: MLflow runs, versions, aliases under a lock, audit trail
6. ``training``, then ``promotion`` (gates, drift review, registration)
7. ``serving`` and ``rollout`` (a base, a controller and its backends)
8. ``orchestration`` (what the DAG tasks call), then ``demo`` and ``cli``

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
