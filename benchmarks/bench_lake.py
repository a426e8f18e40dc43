"""The lake source: rows per second from Parquet day folders into the offline store, from a local
folder and from an S3 API, beside a plain pyarrow copy.

The sample lake (``kmeans generate``'s generator: 20,000 customers x 10 days, the active ones
each day: about 120,000 rows) in a temporary home; the S3 API is moto's server on loopback
(``tests/helpers/processes.py``, a venv of its own under ``.cache/``), the same files uploaded to a
bucket. Each figure is the median of 3 runs.

- **ingest_lake, folder**: what ``kmeans ingest`` and ``kmeans_ingest_lake`` run: each day's
  files listed and read through ``pyarrow.fs``, validated by the ingest rules, one Parquet file
  per day, the quarantine.
- **ingest_lake, S3**: the same with ``KMEANS_LAKE_URL=s3://bucket/lake?endpoint_override=...``.
- **baseline**: what a user would otherwise write: ``pyarrow.dataset`` over the local day folders,
  one ``pq.write_table`` per day: no validation, no quarantine, no type checks.

    .venv/bin/python benchmarks/bench_lake.py            # about a minute

Writes benchmarks/results/lake.json and benchmarks/LAKE.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.settings import load_settings  # noqa: E402
from pipeline.data.datagen import generate_lake  # noqa: E402
from pipeline.data.ingest import ingest_lake  # noqa: E402
from pipeline.data.lake import LAKE_TABLE  # noqa: E402
from tests.helpers.processes import S3Server  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "lake.json"
REPORT = ROOT / "benchmarks" / "LAKE.md"
DAY0 = dt.date(2026, 11, 1)


def baseline(lake: Path, out: Path) -> int:
    """Every day folder read with pyarrow.dataset and written again as one file a day."""
    rows = 0
    for folder in sorted((lake / LAKE_TABLE).iterdir()):
        table = pads.dataset(str(folder), format="parquet").to_table()
        target = out / folder.name
        target.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, target / "part-0.parquet")
        rows += table.num_rows
    return rows


def timed(fn) -> tuple[float, int]:
    started = time.perf_counter()
    rows = fn()
    return time.perf_counter() - started, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    end = DAY0 + dt.timedelta(days=args.days)
    runs: dict[str, list[float]] = {"ingest_folder": [], "ingest_s3": [], "baseline": []}
    with tempfile.TemporaryDirectory(prefix="bench-lake-") as tmp:
        home = Path(tmp) / "home"
        local = load_settings(home=home)
        generate_lake(local.lake_dir, n_customers=args.customers, start=DAY0, days=args.days,
                      seed=3)
        with S3Server(Path(tmp) / "s3") as s3:
            s3.create_bucket("bucket")
            fs = s3.filesystem()
            for path in sorted(local.lake_dir.rglob("*.parquet")):
                with fs.open_output_stream(f"bucket/lake/{path.relative_to(local.lake_dir)}") \
                        as out:
                    out.write(path.read_bytes())
            os.environ.update(s3.env())
            remote = load_settings(home=Path(tmp) / "home-s3", lake_url=s3.uri("bucket/lake"))
            for i in range(args.repeat):
                seconds, rows = timed(lambda: ingest_lake(local, DAY0, end).accepted)
                runs["ingest_folder"].append(seconds)
                seconds, remote_rows = timed(lambda: ingest_lake(remote, DAY0, end).accepted)
                assert remote_rows == rows, (remote_rows, rows)
                runs["ingest_s3"].append(seconds)
                seconds, plain = timed(lambda i=i: baseline(local.lake_dir,
                                                            Path(tmp) / f"plain-{i}"))
                runs["baseline"].append(seconds)
    median = {k: statistics.median(v) for k, v in runs.items()}
    out = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "platform": platform.platform()},
           "rows": rows, "baseline_rows": plain, "days": args.days, "repeat": args.repeat,
           "runs": runs, **{f"{k}_seconds": round(v, 3) for k, v in median.items()},
           **{f"{k}_rows_per_second": round(rows / v) for k, v in median.items()},
           "folder_share_of_baseline": round(median["baseline"] / median["ingest_folder"], 3),
           "s3_over_folder_time": round(median["ingest_s3"] / median["ingest_folder"], 3)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    REPORT.write_text(report(out))
    print(json.dumps(out, indent=2))


def report(r: dict) -> str:
    return f"""# Lake source: rows per second into the offline store

`benchmarks/bench_lake.py`; {r['machine']['cpus']} CPUs, Python {r['machine']['python']}.
{r['rows']:,} sample rows in {r['days']} day folders; median of {r['repeat']} runs. The S3 API
is moto's server on loopback (no network latency: a real store adds its round trips). Figures
in `results/lake.json`.

| what | seconds | rows per second |
| --- | ---: | ---: |
| `ingest_lake` from the folder (`kmeans ingest`): list and read through `pyarrow.fs`, \
validation, Parquet per day, quarantine | {r['ingest_folder_seconds']} \
| {r['ingest_folder_rows_per_second']:,} |
| `ingest_lake` from `s3://` (`KMEANS_LAKE_URL`), the same files | {r['ingest_s3_seconds']} \
| {r['ingest_s3_rows_per_second']:,} |
| baseline: `pyarrow.dataset` per day folder, `pq.write_table` (no validation) \
| {r['baseline_seconds']} | {r['baseline_rows_per_second']:,} |

The landing from the folder runs at {r['folder_share_of_baseline']:.0%} of the plain copy's
speed: the ingest rules (types, ranges, duplicates, dates) and the quarantine cost the rest.
Reading the same files from S3 takes {r['s3_over_folder_time']:.2f}x the folder's time.
"""


if __name__ == "__main__":
    main()
