"""The worker daemon as it was before it warmed the kernel (for bench_first_step.py only)."""

from pyspark import daemon

import pipeline.engine.spark  # noqa: F401

if __name__ == "__main__":
    daemon.manager()
