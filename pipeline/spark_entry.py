"""Entry point for spark-submit and the SparkApplication in k8s/: the ``kmeans`` CLI run as the
Spark driver, e.g. ``spark-submit pipeline/spark_entry.py train <snapshot> --k-max 16``."""

from pipeline.cli import main

if __name__ == "__main__":
    main()
