"""The kmeans CLI: each stage on a small lake, in-process (typer's runner), and clear errors."""

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.data.lake import LAKE_TABLE
from tests.helpers.clock import iso_day, partition

runner = CliRunner()
#: Days the lake holds nothing: years before the sample calendar.
GONE, GONE_END = iso_day(-5 * 365), iso_day(-5 * 365 + 1)


def _ok(*args) -> dict | list:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_stages_end_to_end(settings):
    gen = _ok("generate", "--customers", "800", "--days", "2", "--seed", "3",
              "--start", iso_day(0))
    assert gen["days"] == [iso_day(0), iso_day(1)]
    landed = _ok("ingest", "--start", iso_day(0), "--end", iso_day(2))
    assert landed["accepted"] == gen["rows"] and landed["rejected"] == 0
    assert "customer_segments_v1" in _ok("apply")
    _ok("materialize", "--start", iso_day(-31), "--end", iso_day(2))
    snap = _ok("snapshot", "--start", iso_day(0), "--end", iso_day(2))["snapshot"]
    assert _ok("validate", snap)["report"].endswith(".html")
    trained = _ok("train", snap, "--k-min", "2", "--k-max", "4", "--engine", "local",
                  "--max-iter", "20")
    assert 2 <= trained["k"] <= 4 and "silhouette" in trained["metrics"]
    evaluated = _ok("evaluate", trained["run_id"], snap)
    assert "challenger" in evaluated and "champion" not in evaluated
    strict = runner.invoke(app, ["gates", trained["run_id"], snap],
                           env={"KMEANS_GATE_MIN_SILHOUETTE_LO": "0.9"})
    assert strict.exit_code == 1, strict.output
    assert strict.stderr.splitlines()[-1].startswith(
        f"run {trained['run_id']} refused by the gates: quality gate refused: silhouette CI "
        f"lower bound 0.")
    gated = _ok("gates", trained["run_id"], snap)
    assert gated["passed"] and not gated["review"]
    assert {g: v["status"] for g, v in gated["gates"].items()} == dict.fromkeys(
        ("data", "quality", "comparison", "drift"), "passed")
    registered = _ok("register", trained["run_id"])
    assert {k: registered[k] for k in ("model", "version", "aliases", "run_id")} == {
        "model": "customer_segments", "version": "1", "aliases": ["challenger", "champion"],
        "run_id": trained["run_id"]}
    assert registered["figures"]["gates"]["quality"]["silhouette_lo"] > 0
    assert [e["alias"] for e in _ok("audit")] == ["challenger", "champion"]
    staged = _ok("blocks")
    assert staged["stage_dir"] == str(settings.stage_dir) and staged["would_remove"] == []
    assert [k["blocks"] for k in staged["keys"]] == [len(list(Path(snap).glob("*.parquet")))]
    cleaned = _ok("blocks", "--clean", "--retention-hours", "0")
    assert cleaned["removed"] == [staged["keys"][0]["path"]] and _ok("blocks")["keys"] == []


def test_generated_data_ends_yesterday_by_default(settings):
    """So that unpausing the daily DAG today finds its whole window in the lake."""
    today = dt.datetime.now(dt.UTC).date()
    gen = _ok("generate", "--customers", "50", "--days", "3")
    assert gen["days"] == [str(today - dt.timedelta(days=d)) for d in (3, 2, 1)]


@pytest.mark.parametrize("args, message", [
    (["train", "/nonexistent", "--k-min", "5", "--k-max", "3"],
     "k_max=3 should be >= k_min=5"),
    (["ingest", "--start", GONE, "--end", GONE_END], "no lake partitions"),
    (["ingest", "--start", iso_day(2), "--end", iso_day(0)],
     f"interval end={iso_day(0)} must be after start={iso_day(2)}"),
    (["ingest", "--start", GONE, "--end", GONE_END, "--delete-missing"],
     f"no lake partitions for [{GONE}, {GONE_END})"),
    (["ingest", "--start", iso_day(0), "--end", iso_day(1), "--delete-missing", "yes"],
     "Got unexpected extra argument(s) (yes)"),
    (["register", "no-such-run"], "error:"),
])
def test_bad_input_is_one_clear_line(settings, args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output


def test_a_type_changed_lake_day_is_refused_in_one_line(settings):
    """A day whose event_timestamp arrives as int64 epoch seconds: exit 2 and one line naming
    the day, the reason, the share and the threshold; the other day is landed."""
    _ok("generate", "--customers", "300", "--days", "2", "--seed", "3", "--start", iso_day(0))
    part = settings.lake_dir / LAKE_TABLE / partition(1) / "part-00000.parquet"
    frame = pd.read_parquet(part)
    frame["event_timestamp"] = ((frame["event_timestamp"] - pd.Timestamp(0, tz="UTC"))
                                // pd.Timedelta(seconds=1))
    frame.to_parquet(part, index=False)
    result = runner.invoke(app, ["ingest", "--start", iso_day(0), "--end", iso_day(2)])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: ingest refused 1 day of [{iso_day(0)}, {iso_day(2)}) "
                           f"(1 landed): {partition(1)}: {len(frame)} of {len(frame)} rows "
                           f"rejected, share 1 exceeds ingest_max_reject_share=0.2 (reasons: "
                           f"{{'event_timestamp has type int64, expected a timestamp': "
                           f"{len(frame)}}})")
    assert "Traceback" not in result.output
