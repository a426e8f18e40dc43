"""Where a served request's time goes, over real sockets: py-spy samples the server process
while wrk drives it closed loop (1 thread, 8 connections, one-row or 100-row v2 infers), and
every sample is charged to the layer of its deepest frame that belongs to one (HTTP transport,
app wrapper, parsing, scoring, metrics, prediction log, access log, event loop).

    .venv/bin/python benchmarks/serving/profile_server.py [--seconds 10] [--targets ours,bare]

Runs each target as bench_serving.py does (pinned to targets.SERVER_CPUS, wrk on another
core); the server's CPU time per request comes from /proc, and a layer's share of the samples
times that gives its microseconds per request. py-spy samples without stopping the process
(``--nonblocking``), so the figures are the server's own. Installs py-spy (pinned) into the
project's venv when it is missing. Writes ``results/profile-server-<date>.json`` and
``PROFILE_SERVER.md``.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_serving  # noqa: E402
import targets  # noqa: E402

PY_SPY = "py-spy==0.4.3"
#: (layer, what a frame's file or function must contain), matched in this order.
LAYERS = (
    ("metrics", ("pipeline/serving/metrics.py", "prometheus_client/")),
    ("prediction log", ("pipeline/serving/predlog.py",)),
    ("parsing and checks", ("pipeline/serving/codec.py",)),
    ("scoring", ("pipeline/serving/model.py", "pipeline/serving/kernels.py",
                 "pipeline/model/", "pipeline/serving/lookup.py")),
    ("dataplane", ("pipeline/serving/dataplane.py", "pipeline/serving/routes.py")),
    ("app wrapper (tokens, slots, access log)", ("pipeline/serving/asgi.py",
                                                 "pipeline/serving/app.py")),
    ("HTTP transport", ("pipeline/serving/transport.py", "uvicorn/", "httptools/")),
    ("bare handler (Starlette)", ("starlette/", "targets.py")),
    ("event loop", ("asyncio/", "uvloop/")),
)


def ensure_py_spy() -> str:
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        uv = Path(sys.executable).parent / "uv"
        cmd = ([str(uv), "pip", "install", "--python", sys.executable, "--quiet", PY_SPY]
               if uv.exists() else [sys.executable, "-m", "pip", "install", "--quiet", PY_SPY])
        subprocess.run(cmd, check=True)
        found = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit(f"could not install {PY_SPY}")
    return found


def layer_of(frame: str) -> str | None:
    for name, marks in LAYERS:
        if any(mark in frame for mark in marks):
            return name
    return None


def charge(raw: str) -> tuple[collections.Counter, collections.Counter, int]:
    """Samples per layer (each sample to its deepest frame in a layer; ``other`` when none
    is) and per leaf function, from py-spy's raw (collapsed) output."""
    layers: collections.Counter = collections.Counter()
    leaves: collections.Counter = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for frame in reversed(frames):
            name = layer_of(frame)
            if name is not None:
                layers[name] += n
                break
        else:
            layers["other"] += n
        leaves[_short(frames[-1])] += n
    return layers, leaves, total


def _short(frame: str) -> str:
    """``function (file)``: py-spy's frame without its line, the file relative to the venv or
    the project."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    where = where.split("/site-packages/")[-1].replace(str(bench_serving.ROOT) + "/", "")
    return f"{name} ({where})"


def profile_target(name: str, inputs: dict, work: Path, script: Path, seconds: int,
                   py_spy: str) -> dict:
    port = bench_serving.free_port()
    with targets.start(name, port, work, inputs["centroids"], bench_serving.TOKEN,
                       inputs["probe"]) as server:
        bench_serving.wrk(port, script, 2, server)  # warm
        plain = bench_serving.wrk(port, script, seconds, server)
        with tempfile.NamedTemporaryFile(suffix=".txt") as out:
            spy = subprocess.Popen([py_spy, "record", "--pid", str(server.pid), "--rate",
                                    "1000", "--duration", str(seconds + 2), "--nonblocking",
                                    "--format", "raw", "--output", out.name],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            sampled = bench_serving.wrk(port, script, seconds, server)
            _, err = spy.communicate(timeout=seconds + 60)
            raw = Path(out.name).read_text()
    layers, leaves, total = charge(raw)
    if not total:
        raise SystemExit(f"py-spy took no samples of {name}: {err.decode()[-2000:]}")
    cpu = plain["cpu_us_per_req"]
    return {"cpu_us_per_req": cpu, "rps": plain["rps"],
            "sampled_cpu_us_per_req": sampled["cpu_us_per_req"], "samples": total,
            "layers": {k: {"share": v / total, "us_per_req": cpu * v / total}
                       for k, v in layers.most_common()},
            "leaves": [{"function": k, "share": v / total, "us_per_req": cpu * v / total}
                       for k, v in leaves.most_common(60)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--targets", default="ours,bare")
    parser.add_argument("--rows", default="1,100")
    args = parser.parse_args()
    py_spy = ensure_py_spy()
    bench_serving.ensure_wrk()
    work = bench_serving.BUILD / "profile-server"
    work.mkdir(parents=True, exist_ok=True)
    inputs = bench_serving.make_inputs(work)
    rng = np.random.default_rng(3)
    run: dict = {"date": dt.date.today().isoformat(),
                 "loadavg_start": [round(x, 2) for x in os.getloadavg()],
                 "machine": bench_serving.machine(), "seconds": args.seconds, "runs": {}}
    for rows in (int(r) for r in args.rows.split(",")):
        script = work / f"rows-{rows}.lua"
        bench_serving.write_wrk_script(script, [
            json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [rows, 12],
                                    "data": rng.normal(size=rows * 12).round(4).tolist()}]})
            for _ in range(32)])
        for name in args.targets.split(","):
            print(f"{name}, {rows} row(s) per request", flush=True)
            run["runs"][f"{name}/{rows}"] = profile_target(name, inputs, work, script,
                                                           args.seconds, py_spy)
    run["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    (HERE / "results" / f"profile-server-{run['date']}.json").write_text(
        json.dumps(run, indent=1))
    text = markdown(run)
    (HERE / "PROFILE_SERVER.md").write_text(text)
    print(text)


def markdown(run: dict) -> str:
    lines = ["# Where a served request's time goes (py-spy, over sockets)", "",
             f"`python benchmarks/serving/profile_server.py` on {run['date']}: "
             f"{run['machine']['cpu']}, load average {run['loadavg_start']} at start, "
             f"{run['loadavg_end']} at end. wrk closed loop (1 thread, 8 connections, "
             f"{run['seconds']} s) on one core, the server pinned to the other; py-spy at "
             "1,000 samples a second without stopping it. A layer is charged the samples "
             "whose deepest frame is in it; its share of the server's CPU time per request "
             "(measured in a run without py-spy) gives its microseconds.", ""]
    for key, r in run["runs"].items():
        name, rows = key.split("/")
        lines += [f"## {name}, {rows} row(s) per request: {r['cpu_us_per_req']:.0f} us of "
                  f"server CPU per request ({r['rps']:,.0f} req/s closed loop; "
                  f"{r['sampled_cpu_us_per_req']:.0f} us while sampled)", "",
                  "| layer | share | us per request |", "| --- | ---: | ---: |"]
        lines += [f"| {k} | {v['share']:.1%} | {v['us_per_req']:.1f} |"
                  for k, v in r["layers"].items()]
        lines += ["", "Leaf functions (own time):", "",
                  "| function | share | us per request |", "| --- | ---: | ---: |"]
        lines += [f"| `{x['function']}` | {x['share']:.1%} | {x['us_per_req']:.1f} |"
                  for x in r["leaves"][:12]]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
