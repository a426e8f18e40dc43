"""K-means customer segmentation platform.

The package holds every stage of the platform; the Airflow DAGs, the ``kmeans`` CLI and the
tests all call the same functions. Nothing runs at import time.
"""

__version__ = "0.1.0"

# Importing feast sets PROMETHEUS_MULTIPROC_DIR, and prometheus_client decides at its own import
# whether metric values live in memory or in mmap files under that folder. Deciding first keeps
# the inference server's metrics in memory (no files, no per-increment file lock) whatever
# imports feast later in the process.
import prometheus_client.values  # noqa: E402,F401
