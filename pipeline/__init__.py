"""K-means customer segmentation platform.

The package holds every stage of the platform; the Airflow DAGs, the ``kmeans`` CLI and the
tests all call the same functions. Nothing runs at import time.
"""

__version__ = "0.1.0"
