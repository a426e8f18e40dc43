"""Where a request's time goes in the platform's server, in-process: one-row and 100-row v2
infers through the ASGI app on uvloop (no sockets), as ``ours`` of targets.py builds it (tokens,
metrics, access log to /dev/null, a canary on 10% of keys).

    .venv/bin/python benchmarks/serving/profile_request.py [--requests 20000]

- µs per request for each prediction-log sample rate (1.0, the default; 0.1; 0.01; 0.001; off),
  the rates interleaved over 9 rounds, medians; and each rate's cost over the log off, paired
  within a round, with the middle half of those differences: the log stops costing anything
  measurable at the highest rate whose middle half holds 0;
- cProfile's top functions by their own time for 1 and 100 rows (cProfile slows every call, so
  read the shares, not the absolute times).

Writes ``results/profile-<date>.json`` and ``PROFILE.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import io
import json
import os
import pstats
import statistics
import sys
from pathlib import Path

import numpy as np
import orjson
import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import targets  # noqa: E402

TOKEN = "profile-token-0123456789"
RATES = (1.0, 0.1, 0.01, 0.001, 0.0)  # 0.0: no log, as the server runs at rate 0
ROUNDS = 9


def make_app(centroids: np.ndarray, rate: float):
    app = targets.build_ours(centroids, TOKEN, with_feast=False,
                             access_log=open(os.devnull, "wb"))  # noqa: SIM115
    if rate == 0.0:
        app.prediction_log = app.dataplane.prediction_log = None
    else:
        app.prediction_log.sample_rate = rate
    return app


def bodies(rng: np.random.Generator, rows: int) -> list[bytes]:
    return [orjson.dumps({"inputs": [{"name": "features", "datatype": "FP32",
                                      "shape": [rows, 12],
                                      "data": rng.normal(size=rows * 12).tolist()}]})
            for _ in range(64)]


async def drive(app, payloads: list[bytes], n: int) -> float:
    """µs per request over ``n`` requests (:func:`targets.drive_asgi`)."""
    return await targets.drive_asgi(app, payloads, n, TOKEN) * 1e6


def top(profile: cProfile.Profile, k: int = 15) -> list[dict]:
    stats = pstats.Stats(profile, stream=io.StringIO())
    total = sum(v[2] for v in stats.stats.values())  # own time, all functions
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:k]
    out = []
    for (file, line, name), (_cc, calls, own, cum, _callers) in rows:
        where = file.split("/site-packages/")[-1].split("/work/main/")[-1]
        out.append({"function": f"{where}:{line}({name})", "calls": calls,
                    "own_share": own / total, "cumulative_share": cum / total})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    uvloop.install()
    rng = np.random.default_rng(1)
    centroids = rng.normal(size=(8, 12)).astype(np.float32)
    one, hundred = bodies(rng, 1), bodies(rng, 100)
    apps = {rate: make_app(centroids, rate) for rate in RATES}
    for app in apps.values():
        asyncio.run(drive(app, one, 3000))  # warm: numba, caches
    per_rate: dict[float, list[float]] = {rate: [] for rate in RATES}
    per_rate_100: dict[float, list[float]] = {rate: [] for rate in RATES}
    for _ in range(ROUNDS):
        for rate, app in apps.items():
            per_rate[rate].append(asyncio.run(drive(app, one, args.requests // 2)))
            per_rate_100[rate].append(asyncio.run(drive(app, hundred, args.requests // 20)))
            if app.prediction_log is not None:
                app.prediction_log.flush()
    profiles = {}
    for name, payloads, n in (("1 row", one, args.requests), ("100 rows", hundred,
                                                              args.requests // 10)):
        profile = cProfile.Profile()
        profile.enable()
        asyncio.run(drive(apps[1.0], payloads, n))
        profile.disable()
        profiles[name] = top(profile)
    run = {"date": dt.date.today().isoformat(), "loadavg": [round(x, 2) for x in
                                                           os.getloadavg()],
           "requests": args.requests,
           "us_per_request": {str(r): statistics.median(v) for r, v in per_rate.items()},
           "us_per_request_100_rows": {str(r): statistics.median(v)
                                       for r, v in per_rate_100.items()},
           "over_off": {str(r): paired(v, per_rate[0.0]) for r, v in per_rate.items()},
           "over_off_100_rows": {str(r): paired(v, per_rate_100[0.0])
                                 for r, v in per_rate_100.items()},
           "profiles": profiles}
    (HERE / "results" / f"profile-{run['date']}.json").write_text(json.dumps(run, indent=1))
    (HERE / "PROFILE.md").write_text(markdown(run))
    print(markdown(run))


def paired(rate: list[float], off: list[float]) -> list[float]:
    """A rate's cost over the log off, paired round by round: the 25th, 50th and 75th
    percentiles of the differences (µs per request)."""
    q = statistics.quantiles([a - b for a, b in zip(rate, off, strict=True)], n=4,
                             method="inclusive")
    return [q[0], q[1], q[2]]


def unmeasurable(over: dict) -> str:
    """The highest sample rate at and below which every measured rate's paired cost has a
    middle half that holds 0, or a sentence that none has."""
    found = None
    for rate in reversed(RATES[:-1]):  # the lowest first
        lo, _mid, hi = over[str(rate)]
        if not lo <= 0 <= hi:
            break
        found = rate
    if found is None:
        return "none of those measured"
    if found == RATES[0]:
        return "every rate measured (the log's cost is within this run's noise)"
    return f"{found:g} and below"


def markdown(run: dict) -> str:
    lines = [
        "# Where a request's time goes (in-process)", "",
        f"`python benchmarks/serving/profile_request.py` on {run['date']} (load average "
        f"{run['loadavg']}): v2 infers through the ASGI app on uvloop, no sockets, as `ours` "
        "of targets.py builds it (tokens, metrics, access log, a canary on 10% of keys); "
        f"the sample rates interleaved over {ROUNDS} rounds, medians. *Over the log off*: "
        "the round-by-round differences, median [middle half].", "",
        "| prediction log sample rate | 1 row, us per request | over the log off | "
        "100 rows, us per request | over the log off |",
        "| --- | ---: | ---: | ---: | ---: |"]

    def over(key: str, rate: float) -> str:
        lo, mid, hi = run[key][str(rate)]
        return f"{mid:+.1f} [{lo:+.1f}, {hi:+.1f}]"

    for rate in RATES:
        a, b = run["us_per_request"][str(rate)], run["us_per_request_100_rows"][str(rate)]
        lines.append(f"| {rate if rate else 'off'} | {a:.1f} | {over('over_off', rate)} | "
                     f"{b:.1f} | {over('over_off_100_rows', rate)} |")
    lines += ["", "The log stops costing anything measurable (the middle half of its paired "
              f"cost holds 0) at sample rate {unmeasurable(run['over_off'])} for one-row "
              f"requests; for 100-row requests at {unmeasurable(run['over_off_100_rows'])}."]
    for name, rows in run["profiles"].items():
        lines += ["", f"## cProfile, {name}, sample rate 1.0 (shares of all own time)", "",
                  "| function | calls | own | cumulative |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| `{r['function']}` | {r['calls']:,} | {r['own_share']:.1%} | "
                  f"{r['cumulative_share']:.1%} |" for r in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
