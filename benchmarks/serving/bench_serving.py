"""Side-by-side serving benchmark: nearest-centroid cluster assignment (K=8, 12 features) over
one-row Open Inference Protocol v2 REST requests, for the platform's server against a bare
Starlette app, MLServer and KServe, one at a time on the same machine in one run.

    .venv/bin/python benchmarks/serving/bench_serving.py [--targets bare,ours] [--repeats 3]

Servers run pinned to CPU 0, the load generators to CPU 1. Per target: closed-loop maximum
throughput with wrk (1 thread, 8 connections), then an open-loop rate sweep with
``loadgen`` (latency from the scheduled send time) until two rates in a row are not held.
Writes ``results/<date>.json`` and ``RESULTS.md`` next to this file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
from pathlib import Path

import numpy as np
import targets

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = HERE / "results"
BUILD = ROOT / ".kmeans" / "bench"
LOADGEN = BUILD / "loadgen"

SEED = 20261101
K, DIM = 8, 12
N_BODIES = 256  # distinct single-row bodies the load generators rotate through
TOKEN = "bench-serving-token"  # sent to every target; only ours checks it
LOADGEN_CPUS = "1"

# A rate is held when the majority of its runs each meet all three.
HELD_MIN_ACHIEVED = 0.99  # achieved rate >= this x target rate
HELD_MAX_P99_MS = 10.0  # p99 latency from the scheduled send time
HELD_MAX_FAILED = 0  # socket errors + timeouts + non-2xx answers

RATES = (1000, 2000, 4000, 6000, 8000, 10000, 12000, 14000, 16000, 18000, 20000, 24000, 28000,
         32000)
SWEEP_STOP_AFTER = 2  # consecutive rates not held: one miss may be noise
CONNECTIONS = 8
WRK_CONNECTIONS, WRK_SECONDS, WRK_WARMUP_SECONDS = 8, 10, 3
OURS_P99_RATE = 2000
BATCH_ROWS, BATCH_REQUESTS, BATCH_RATE = 1000, 200, 10  # sequential-ish: one connection
CUSTOMER_ID_RATE = 500
CUSTOMER_IDS = range(100_001, 101_001)  # the demo data's first 1000 customers
#: Issue 26's goals, in requests per server-CPU second (the figure least moved by other load)
GOALS = {"ours_vs_mlserver": 6.0, "ours_vs_bare": 0.75}


# ------------------------------------------------------------------ setup

def machine() -> dict:
    from pipeline.devtools.machine import cpu_model

    return {"nproc": os.cpu_count(), "cpu": cpu_model(), "kernel": platform.release(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "server_cpus": targets.SERVER_CPUS, "loadgen_cpus": LOADGEN_CPUS}


def make_inputs(work: Path) -> dict:
    """Centroids, N_BODIES one-row bodies (points near random centroids) one JSON per line,
    and one BATCH_ROWS-row body."""
    rng = np.random.default_rng(SEED)
    centroids = rng.normal(0.0, 2.0, (K, DIM)).astype(np.float32)
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "centroids.npy", centroids)

    def rows(n):
        return (centroids[rng.integers(0, K, n)] + rng.normal(0, 0.5, (n, DIM))).astype(np.float32)

    def body(x):
        return json.dumps({"inputs": [{"name": "features", "datatype": "FP32",
                                       "shape": list(x.shape), "data": x.ravel().tolist()}]})

    singles = [body(rows(1)) for _ in range(N_BODIES)]
    (work / "bodies.jsonl").write_text("\n".join(singles) + "\n")
    (work / "batch.jsonl").write_text(body(rows(BATCH_ROWS)) + "\n")
    return {"centroids": work / "centroids.npy", "bodies": work / "bodies.jsonl",
            "batch": work / "batch.jsonl", "probe": singles[0].encode(), "singles": singles}


def customer_id_bodies(ids) -> list[str]:
    return [json.dumps({"inputs": [{"name": "customer_id", "datatype": "INT64", "shape": [1],
                                    "data": [int(i)]}]}) for i in ids]


def build_loadgen() -> None:
    BUILD.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(LOADGEN), str(HERE / "loadgen.c")],
                   check=True)


def ensure_wrk() -> str:
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=True,
                       stdout=subprocess.DEVNULL)
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return (out.stdout + out.stderr).strip().splitlines()[0].split(" Copyright")[0]


def write_wrk_script(path: Path, bodies: list[str]) -> None:
    """POST rotating through the same bodies; done() prints one JSON line (latency in us)."""
    items = ",\n".join(f"[==[{b}]==]" for b in bodies)
    path.write_text(f"""local bodies = {{
{items}
}}
local reqs, i = {{}}, 0
function init(args)
  local headers = {{["Content-Type"] = "application/json",
                   ["Authorization"] = "Bearer {TOKEN}"}}
  for n, b in ipairs(bodies) do reqs[n] = wrk.format("POST", "{targets.INFER_PATH}", headers, b) end
end
function request()
  i = i % #reqs + 1
  return reqs[i]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {{"requests": %d, "duration_us": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "status": %d, "timeout": %d, "p50_us": %.1f, "p90_us": %.1f, ' ..
    '"p99_us": %.1f, "max_us": %.1f, "mean_us": %.1f}}\\n', summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
""")


def ours_source(ref: str | None) -> tuple[dict, str]:
    """Environment for the ``ours`` server and a label of the code it runs: the working tree,
    or the ``pipeline`` package of git ``ref`` exported under .kmeans/bench/ours-src/ and put
    first on PYTHONPATH (to measure a commit while pipeline/ is being edited)."""
    def git(*cmd):
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()

    if ref is None:
        dirty = " with uncommitted changes" if git("status", "--porcelain", "pipeline") else ""
        return {}, f"working tree{dirty} (HEAD {git('rev-parse', '--short=12', 'HEAD')})"
    commit = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    dest = BUILD / "ours-src" / commit
    if not (dest / "pipeline").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit, "pipeline"], cwd=ROOT,
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return {"PYTHONPATH": str(dest)}, f"git {ref} ({commit[:12]})"


def feast_home(work: Path) -> Path:
    """A KMEANS_HOME whose Feast SQLite online store holds CUSTOMER_IDS' features (built once):
    the ``ours`` server reads it for the requests by customer_id."""
    import datetime as dt

    from pipeline.core.settings import load_settings
    from pipeline.data import features
    from pipeline.data.datagen import generate_lake
    from pipeline.data.ingest import ingest_lake

    home = (work / "feast-home").resolve()
    if (home / ".materialized").exists():
        return home
    settings = load_settings(home=home)
    start = dt.date.today() - dt.timedelta(days=2)
    begin = dt.datetime(start.year, start.month, start.day, tzinfo=dt.UTC)
    end = begin + dt.timedelta(days=2)
    generate_lake(settings.lake_dir, n_customers=len(CUSTOMER_IDS), start=start, days=2, seed=7)
    ingest_lake(settings, begin.date(), end.date())
    features.apply_repo(settings)
    features.materialize(settings, begin - dt.timedelta(days=1), end)
    (home / ".materialized").touch()
    return home


def free_port() -> int:
    """A port p with p and p + 1 free (MLServer puts gRPC on p + 1)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue


# ------------------------------------------------------------------ measurements

def wrk(port: int, script: Path, seconds: int, server) -> dict:
    """One wrk run; also the server's CPU time per request and its share of its core (below
    ~0.95 when something else ran on that core)."""
    cpu = targets.cpu_seconds(server)
    out = subprocess.run(["taskset", "-c", LOADGEN_CPUS, "wrk", "-t1",
                          f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "-s", str(script),
                          f"http://127.0.0.1:{port}{targets.INFER_PATH}"],
                         capture_output=True, text=True, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("WRKJSON "))
    r = json.loads(line.removeprefix("WRKJSON "))
    cpu = targets.cpu_seconds(server) - cpu
    return {"rps": r["requests"] / (r["duration_us"] / 1e6),
            "cpu_us_per_req": cpu / r["requests"] * 1e6,
            "server_core_share": cpu / (r["duration_us"] / 1e6),
            "errors": r["connect"] + r["read"] + r["write"] + r["timeout"],
            "non2xx": r["status"], "p50_ms": r["p50_us"] / 1e3, "p90_ms": r["p90_us"] / 1e3,
            "p99_ms": r["p99_us"] / 1e3, "max_ms": r["max_us"] / 1e3}


def closed_loop(port: int, script: Path, repeats: int, server) -> dict:
    wrk(port, script, WRK_WARMUP_SECONDS, server)
    runs = []
    for n in range(repeats):
        r = wrk(port, script, WRK_SECONDS, server)
        runs.append(r)
        print(f"    wrk run {n + 1}: {r['rps']:,.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 "
              f"{r['p99_ms']:.2f} ms; server CPU {r['cpu_us_per_req']:.0f} us/req, "
              f"{r['server_core_share']:.0%} of its core", flush=True)
    return {"runs": runs, **{k: statistics.median(r[k] for r in runs) for k in
                             ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "server_core_share")},
            "failed": sum(r["errors"] + r["non2xx"] for r in runs)}


def loadgen(port: int, bodies: Path, rate: float, *, duration: float, warmup: float,
            connections: int = CONNECTIONS) -> dict:
    out = subprocess.run(["taskset", "-c", LOADGEN_CPUS, str(LOADGEN), "--url-host", "127.0.0.1",
                          "--port", str(port), "--path", targets.INFER_PATH, "--body-file",
                          str(bodies), "--header", f"Authorization: Bearer {TOKEN}",
                          "--rate", str(rate), "--connections", str(connections),
                          "--duration", str(duration), "--warmup", str(warmup), "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def holds(run: dict) -> bool:
    failed = run["errors"] + run["timeouts"] + run["non2xx"]
    return (run["achieved_rate"] >= HELD_MIN_ACHIEVED * run["target_rate"]
            and run["latency_ms"] is not None and run["latency_ms"]["p99"] <= HELD_MAX_P99_MS
            and failed <= HELD_MAX_FAILED)


def at_rate(port: int, bodies: Path, rate: float, repeats: int, duration: float,
            warmup: float) -> dict:
    """``repeats`` open-loop runs at ``rate`` (fewer once most have failed): medians, held."""
    runs = []
    while len(runs) < repeats and sum(not holds(r) for r in runs) <= repeats // 2:
        runs.append(loadgen(port, bodies, rate, duration=duration, warmup=warmup))
    lat = [r["latency_ms"] or {"p50": float("inf"), "p99": float("inf"), "p999": float("inf")}
           for r in runs]
    point = {"rate": rate, "runs": runs, "held": sum(map(holds, runs)) > repeats // 2,
             "achieved_rate": statistics.median(r["achieved_rate"] for r in runs),
             "p50_ms": statistics.median(x["p50"] for x in lat),
             "p99_ms": statistics.median(x["p99"] for x in lat),
             "p999_ms": statistics.median(x["p999"] for x in lat),
             "failed": sum(r["errors"] + r["timeouts"] + r["non2xx"] for r in runs)}
    print(f"    {rate:>6,} req/s: achieved {point['achieved_rate']:,.0f}, p50 "
          f"{point['p50_ms']:.2f} ms, p99 {point['p99_ms']:.2f} ms, failed {point['failed']} "
          f"({len(runs)} runs) -> {'held' if point['held'] else 'NOT held'}", flush=True)
    return point


def sweep(port: int, bodies: Path, rates, repeats: int, duration: float, warmup: float) -> dict:
    """Rates in order until SWEEP_STOP_AFTER consecutive ones are not held."""
    points = []
    for rate in rates:
        points.append(at_rate(port, bodies, rate, repeats, duration, warmup))
        if len(points) >= SWEEP_STOP_AFTER and not any(
                p["held"] for p in points[-SWEEP_STOP_AFTER:]):
            break
    held = [p for p in points if p["held"]]
    return {"points": points, "highest_held": held[-1] if held else None}


def batch_latency(port: int, body: Path) -> dict:
    """BATCH_REQUESTS requests of BATCH_ROWS rows, one connection at BATCH_RATE req/s."""
    r = loadgen(port, body, BATCH_RATE, duration=BATCH_REQUESTS / BATCH_RATE, warmup=2,
                connections=1)
    return {"rows": BATCH_ROWS, "requests": r["count"], "failed": r["errors"] + r["non2xx"],
            "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"],
            "max_ms": r["latency_ms"]["max"]}


def by_customer_id(name: str, port: int, work: Path, repeats: int, duration: float,
                   warmup: float) -> dict:
    """Single-row v2 requests by customer_id (features from the Feast online store) at
    CUSTOMER_ID_RATE, ids rotating through CUSTOMER_IDS. Needs a target built with an online
    store: set ``by_customer_id`` on it in targets.TARGETS once build_ours takes one."""
    if not targets.TARGETS[name].by_customer_id:
        return {"skipped": f"target {name!r} has no Feast online store (build_ours builds it "
                           "without one); lookups by customer_id are not measured"}
    bodies = work / "customer_ids.jsonl"
    bodies.write_text("\n".join(customer_id_bodies(CUSTOMER_IDS)) + "\n")
    return at_rate(port, bodies, CUSTOMER_ID_RATE, repeats, duration, warmup)


def bench_target(name: str, inputs: dict, work: Path, wrk_script: Path | None, args,
                 env: dict) -> dict:
    port = free_port()
    with targets.start(name, port, work / "servers", inputs["centroids"], TOKEN,
                       inputs["probe"], env) as server:
        res = {}
        if wrk_script is not None:
            print("  closed loop (wrk)", flush=True)
            res["closed_loop"] = closed_loop(port, wrk_script, args.repeats, server)
        print("  open loop (loadgen)", flush=True)
        res["open_loop"] = sweep(port, inputs["bodies"], args.rates, args.repeats,
                                 args.duration, args.warmup)
        if name == "ours":
            done = [p for p in res["open_loop"]["points"] if p["rate"] == OURS_P99_RATE]
            print(f"  ours: p99 at {OURS_P99_RATE} req/s", flush=True)
            res["p99_at_rate"] = done[0] if done else at_rate(
                port, inputs["bodies"], OURS_P99_RATE, args.repeats, args.duration, args.warmup)
            print(f"  ours: {BATCH_ROWS}-row batch latency", flush=True)
            res["batch"] = batch_latency(port, inputs["batch"])
            print(f"    p50 {res['batch']['p50_ms']:.1f} ms, p99 {res['batch']['p99_ms']:.1f} ms",
                  flush=True)
            res["by_customer_id"] = by_customer_id(name, port, work, args.repeats,
                                                   args.duration, args.warmup)
    return res


# ------------------------------------------------------------------ report

def _ratio(a, b):
    return a / b if a and b else None


def ratios(results: dict) -> dict:
    """a / b of closed-loop req/s, of the highest rate held, and of requests per server CPU
    second (b's CPU per request / a's: the least sensitive to other load on the core)."""
    def figures(name):
        res = results.get(name, {})
        closed = res.get("closed_loop", {})
        held = res.get("open_loop", {}).get("highest_held")
        return closed.get("rps"), held["rate"] if held else None, closed.get("cpu_us_per_req")

    out = {}
    for key, (a, b) in {"ours_vs_mlserver": ("ours", "mlserver"), "ours_vs_bare": ("ours", "bare"),
                        "kserve_vs_bare": ("kserve", "bare")}.items():
        (ca, ha, ua), (cb, hb, ub) = figures(a), figures(b)
        out[key] = {"closed_loop": _ratio(ca, cb), "held_rate": _ratio(ha, hb),
                    "per_cpu_second": _ratio(ub, ua), "goal": GOALS.get(key)}
    return out


def _f(x, fmt="{:,.0f}"):
    return "-" if x is None else fmt.format(x)


def markdown(run: dict) -> str:
    m, res = run["machine"], run["targets"]
    lines = [
        "# Serving benchmark results", "",
        f"Written by `benchmarks/serving/bench_serving.py` on {run['date']}; raw figures in "
        f"`benchmarks/serving/results/{run['date']}.json`. Method: [README.md](README.md).", "",
        f"Machine: {m['nproc']} cores, {m['cpu']}, Linux {m['kernel']}; load average at start "
        f"{m['loadavg_at_start']}, at end {m['loadavg_at_end']} (figures from a busy machine "
        f"are low and noisy: take the final ones on an idle machine). Servers on CPU "
        f"{m['server_cpus']}, load generators on CPU {m['loadgen_cpus']}. "
        f"{run['wrk_version']}. ours: the {run['ours_source']}.", "",
        f"Held: at least {run['repeats'] // 2 + 1} of {run['repeats']} runs of "
        f"{run['duration_s']:g} s (after {run['warmup_s']:g} s warm-up) with achieved >= "
        f"{HELD_MIN_ACHIEVED} x target, p99 <= {HELD_MAX_P99_MS:g} ms from the scheduled send "
        f"time, no errors or non-2xx; a sweep stops after {SWEEP_STOP_AFTER} rates in a row "
        f"not held. Closed loop: wrk -t1 -c{WRK_CONNECTIONS} "
        f"-d{WRK_SECONDS}s, median of {run['repeats']}.", "",
        "| target | closed loop req/s | closed loop p50 / p99 ms | server CPU us/req (share "
        "of its core) | highest rate held (req/s) | p50 / p99 ms there |",
        "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in res.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'].splitlines()[0][:120]} | | | | |")
            continue
        c, h = r.get("closed_loop"), r["open_loop"]["highest_held"]
        lines.append(
            f"| {name} | {_f(c and c['rps'])} | "
            f"{_f(c and c['p50_ms'], '{:.2f}')} / {_f(c and c['p99_ms'], '{:.2f}')} | "
            f"{_f(c and c['cpu_us_per_req'])} ({_f(c and c['server_core_share'], '{:.0%}')}) | "
            f"{_f(h and h['rate'])} | {_f(h and h['p50_ms'], '{:.2f}')} / "
            f"{_f(h and h['p99_ms'], '{:.2f}')} |")
    lines += ["", "| ratio | closed loop req/s | highest rate held | req per CPU second | goal |",
              "| --- | ---: | ---: | ---: | --- |"]
    for key, r in run["ratios"].items():
        goal = "-" if r["goal"] is None else (
            f">= {r['goal']:g}x per CPU second: "
            + ("met" if (r["per_cpu_second"] or 0) >= r["goal"] else "NOT met"))
        lines.append(f"| {key.replace('_vs_', ' / ')} | {_f(r['closed_loop'], '{:.2f}x')} | "
                     f"{_f(r['held_rate'], '{:.2f}x')} | {_f(r['per_cpu_second'], '{:.2f}x')} | "
                     f"{goal} |")
    lines.append("")
    lines.append("Held-rate ratios have the resolution of the rate grid "
                 f"({', '.join(f'{x:,}' for x in run['rates'])} req/s). Requests per CPU "
                 "second: the server's CPU time per request in the closed-loop runs, the figure "
                 "least moved by other load on the server's core (a share of its core below "
                 "~95% means something else ran there).")
    ours = res.get("ours", {})
    if "open_loop" in ours:
        p, b, cid = ours["p99_at_rate"], ours["batch"], ours["by_customer_id"]
        lines += ["", "## ours", "",
                  f"- single row at {OURS_P99_RATE:,} req/s open loop: p50 {p['p50_ms']:.2f} ms, "
                  f"p99 {p['p99_ms']:.2f} ms ({'held' if p['held'] else 'not held'})",
                  f"- {b['rows']:,}-row batch, {b['requests']} requests on one connection at "
                  f"{BATCH_RATE} req/s: p50 {b['p50_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms, "
                  f"max {b['max_ms']:.1f} ms, failed {b['failed']}",
                  f"- by customer_id at {CUSTOMER_ID_RATE} req/s: " + (
                      f"skipped: {cid['skipped']}" if "skipped" in cid else
                      f"p50 {cid['p50_ms']:.2f} ms, p99 {cid['p99_ms']:.2f} ms "
                      f"({'held' if cid['held'] else 'not held'})")]
    lines += ["", "## Open-loop sweeps", "",
              "Medians over the runs at each rate; latency from the scheduled send time.", ""]
    for name, r in res.items():
        if "open_loop" not in r:
            continue
        lines += [f"### {name}", "",
                  "| target req/s | achieved | p50 ms | p99 ms | p99.9 ms | failed | runs | held |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for p in r["open_loop"]["points"]:
            lines.append(f"| {p['rate']:,} | {p['achieved_rate']:,.0f} | {p['p50_ms']:.2f} | "
                         f"{p['p99_ms']:.2f} | {p['p999_ms']:.2f} | {p['failed']} | "
                         f"{len(p['runs'])} | {'yes' if p['held'] else 'no'} |")
        lines.append("")
    lines += ["## Versions", ""]
    for name, v in run["versions"].items():
        lines.append(f"- {name}: " + ", ".join(f"{k} {x or '(not installed)'}"
                                                for k, x in v.items()))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=",".join(targets.TARGETS),
                        help="comma-separated, from " + ", ".join(targets.TARGETS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per open-loop run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each one")
    parser.add_argument("--rates", type=lambda s: [int(x) for x in s.split(",")],
                        default=list(RATES))
    parser.add_argument("--work", type=Path, default=BUILD / "serving")
    parser.add_argument("--ours-ref", help="run ours from this git commit's pipeline/ instead "
                                           "of the working tree (e.g. HEAD)")
    args = parser.parse_args()
    names = args.targets.split(",")
    unknown = set(names) - set(targets.TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}")

    run = {"date": dt.date.today().isoformat(), "machine": machine(),
           "criteria": {"min_achieved": HELD_MIN_ACHIEVED, "max_p99_ms": HELD_MAX_P99_MS,
                        "max_failed": HELD_MAX_FAILED, "majority_of_runs": True},
           "repeats": args.repeats, "duration_s": args.duration, "warmup_s": args.warmup,
           "rates": args.rates, "connections": CONNECTIONS}
    print(f"machine: {run['machine']}")
    print(f"held: achieved >= {HELD_MIN_ACHIEVED} x target, p99 <= {HELD_MAX_P99_MS} ms, "
          f"failed <= {HELD_MAX_FAILED}, in most of {args.repeats} runs", flush=True)
    inputs = make_inputs(args.work)
    build_loadgen()
    try:
        run["wrk_version"] = ensure_wrk()
        wrk_script = args.work / "post.lua"
        write_wrk_script(wrk_script, inputs["singles"])
    except (OSError, subprocess.CalledProcessError) as err:
        run["wrk_version"] = f"wrk unavailable ({err}): no closed-loop figures"
        wrk_script = None
    print(run["wrk_version"], flush=True)

    ours_env, run["ours_source"] = ours_source(args.ours_ref)
    if "ours" in names:
        ours_env["KMEANS_HOME"] = str(feast_home(args.work))
    print(f"ours runs the {run['ours_source']}", flush=True)
    run["versions"], run["targets"] = {}, {}
    for name in names:
        print(f"{name}:", flush=True)
        try:
            targets.ensure_venv(targets.TARGETS[name])
            run["versions"][name] = targets.versions(targets.TARGETS[name])
            print(f"  {run['versions'][name]}", flush=True)
            run["targets"][name] = bench_target(name, inputs, args.work, wrk_script, args,
                                                ours_env if name == "ours" else {})
        except (RuntimeError, subprocess.CalledProcessError) as err:
            detail = getattr(err, "stderr", None) or ""
            run["targets"][name] = {"error": f"{err}\n{detail}".strip()}
            print(f"  FAILED: {run['targets'][name]['error']}", flush=True)
    run["ratios"] = ratios(run["targets"])
    run["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]

    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{run['date']}.json"
    out.write_text(json.dumps(run, indent=2) + "\n")
    report = markdown(run)
    (HERE / "RESULTS.md").write_text(report)
    print(f"\nwrote {out.relative_to(ROOT)} and {(HERE / 'RESULTS.md').relative_to(ROOT)}\n")
    print(report)


if __name__ == "__main__":
    main()
