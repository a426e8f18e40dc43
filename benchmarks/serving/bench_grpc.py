"""gRPC beside REST on the platform's server: the same process (``ours`` of targets.py, with
``--grpc-port``), the same rows, 1 and 1,000 rows per request, side by side in one run.

    .venv/bin/python benchmarks/serving/bench_grpc.py [--seconds 8] [--repeats 3]

The server runs pinned to CPU 0 as in bench_serving.py; the clients run in this process, pinned
to CPU 1: ``grpc.aio`` calls with the request's bytes built once (raw FP32 contents, as
tritonclient sends them), and a minimal asyncio HTTP/1.1 keep-alive client posting the JSON
body built once. Each is a closed loop of ``--concurrency`` callers for ``--seconds``, after a
warm-up; three rounds, protocols interleaved, medians reported. The figure that compares the
two paths is the server's CPU time per request (user + system of its process group, from
/proc): it is what the protocol costs the server, whichever client drives it. Throughput and
latency are those of a Python client and are reported for context.

Writes ``results/grpc-<date>.json`` and ``GRPC.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

import targets  # noqa: E402
from bench_serving import BUILD, free_port, machine, make_inputs  # noqa: E402

from pipeline.serving import v2proto  # noqa: E402

TOKEN = "bench-token-0123456789"
CLIENT_CPUS = {1}
INFER = f"/{v2proto.SERVICE}/ModelInfer"


def grpc_body(x: np.ndarray) -> bytes:
    msg = v2proto.ModelInferRequest(model_name=targets.MODEL_NAME)
    msg.inputs.add(name="features", datatype="FP32", shape=list(x.shape))
    msg.raw_input_contents.append(np.ascontiguousarray(x, dtype="<f4").tobytes())
    return msg.SerializeToString()


def rest_request(port: int, body: bytes) -> bytes:
    return (f"POST {targets.INFER_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _rest_caller(port: int, requests: list[bytes], stop: float, out: list[float]):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    try:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            writer.write(requests[i % len(requests)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"REST answered {head[:80]!r}")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            out.append(time.perf_counter() - t0)
    finally:
        writer.close()


async def _grpc_caller(channel, bodies: list[bytes], stop: float, out: list[float]):
    call = channel.unary_unary(INFER)
    meta = (("authorization", f"Bearer {TOKEN}"),)
    i = 0
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        await call(bodies[i % len(bodies)], metadata=meta)
        i += 1
        out.append(time.perf_counter() - t0)


async def closed_loop(protocol: str, port: int, bodies: list[bytes], seconds: float,
                      concurrency: int) -> list[float]:
    stop = time.perf_counter() + seconds
    out: list[float] = []
    if protocol == "rest":
        requests = [rest_request(port, b) for b in bodies]
        await asyncio.gather(*(_rest_caller(port, requests, stop, out)
                               for _ in range(concurrency)))
    else:
        options = [("grpc.max_receive_message_length", 64 << 20)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            await asyncio.gather(*(_grpc_caller(channel, bodies, stop, out)
                                   for _ in range(concurrency)))
    return out


def measure(protocol: str, port: int, bodies: list[bytes], server, seconds: float,
            concurrency: int) -> dict:
    asyncio.run(closed_loop(protocol, port, bodies, min(seconds, 2.0), concurrency))  # warm-up
    cpu0, t0 = targets.cpu_seconds(server), time.perf_counter()
    lat = asyncio.run(closed_loop(protocol, port, bodies, seconds, concurrency))
    wall, cpu = time.perf_counter() - t0, targets.cpu_seconds(server) - cpu0
    lat_ms = np.asarray(lat) * 1000
    return {"requests": len(lat), "rps": len(lat) / wall,
            "server_cpu_us_per_req": cpu / len(lat) * 1e6, "server_core_share": cpu / wall,
            "p50_ms": float(np.percentile(lat_ms, 50)), "p99_ms": float(np.percentile(lat_ms, 99))}


def serve_echo(port: int) -> None:
    """The floor of gRPC's Python server here: grpc.aio on uvloop (as ours runs), a generic
    handler answering every ModelInfer with the same prebuilt one-row answer."""
    import uvloop

    reply = v2proto.ModelInferResponse(model_name=targets.MODEL_NAME, model_version="1")
    reply.outputs.add(name="cluster", datatype="INT64", shape=[1])
    reply.raw_output_contents.append(np.zeros(1, "<i8").tobytes())
    answer = reply.SerializeToString()

    async def infer(raw: bytes, context) -> bytes:
        return answer

    async def run() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            v2proto.SERVICE, {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    uvloop.install()
    asyncio.run(run())


@contextlib.contextmanager
def echo_server(port: int):
    proc = subprocess.Popen(["taskset", "-c", targets.SERVER_CPUS, sys.executable, __file__,
                             "--echo", str(port)], start_new_session=True,
                            env=targets.server_env())
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                    channel.unary_unary(INFER)(b"", timeout=2)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the gRPC echo server did not start") from None
                time.sleep(0.2)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def main() -> None:
    if sys.argv[1:2] == ["--echo"]:
        serve_echo(int(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rows", type=lambda v: [int(x) for x in v.split(",")],
                        default=[1, 1000], help="rows per request, comma-separated")
    parser.add_argument("--work", type=Path, default=BUILD / "grpc")
    args = parser.parse_args()
    os.sched_setaffinity(0, CLIENT_CPUS)
    inputs = make_inputs(args.work)
    centroids = np.load(inputs["centroids"])
    rng = np.random.default_rng(7)

    def rows(n):
        return (centroids[rng.integers(0, len(centroids), n)]
                + rng.normal(0, 0.5, (n, centroids.shape[1]))).astype(np.float32)

    sets = {n: [rows(n) for _ in range(64 if n == 1 else 4)] for n in args.rows}
    bodies = {("rest", n): [json.dumps({"inputs": [{
        "name": "features", "datatype": "FP32", "shape": list(x.shape),
        "data": x.ravel().tolist()}]}).encode() for x in xs] for n, xs in sets.items()}
    bodies.update({("grpc", n): [grpc_body(x) for x in xs] for n, xs in sets.items()})
    port, gport = free_port(), free_port()
    run = {"date": dt.date.today().isoformat(), "machine": machine(),
           "seconds": args.seconds, "repeats": args.repeats, "concurrency": args.concurrency,
           "versions": targets.versions(targets.TARGETS["ours"]) | {
               "grpcio": grpc.__version__}, "rounds": []}
    with targets.start("ours", port, args.work, inputs["centroids"], TOKEN, inputs["probe"],
                       env={"KMEANS_BENCH_GRPC_PORT": str(gport)}) as server:
        for r in range(args.repeats):
            cells = {}
            for n in args.rows:
                for protocol in (("rest", "grpc") if r % 2 == 0 else ("grpc", "rest")):
                    cells[f"{protocol} {n}"] = measure(
                        protocol, port if protocol == "rest" else gport,
                        bodies[protocol, n], server, args.seconds, args.concurrency)
                    print(f"round {r} {protocol} {n}: {cells[f'{protocol} {n}']}", flush=True)
            run["rounds"].append(cells)
    with echo_server(free_port()) as echo:  # the floor: grpc.aio answering a prebuilt reply
        for cells in run["rounds"]:
            cells["grpc-floor 1"] = measure("grpc", int(echo.args[-1]), bodies["grpc", 1]
                                            if ("grpc", 1) in bodies else [b""], echo,
                                            args.seconds, args.concurrency)
            print(f"grpc-floor 1: {cells['grpc-floor 1']}", flush=True)
    run["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = HERE / "results" / f"grpc-{run['date']}.json"
    out.write_text(json.dumps(run, indent=1))
    (HERE / "GRPC.md").write_text(markdown(run))
    print(markdown(run))


def markdown(run: dict) -> str:
    keys = list(run["rounds"][0])

    def med(key, field):
        return statistics.median(c[key][field] for c in run["rounds"])

    m = run["machine"]
    lines = [
        "# gRPC beside REST", "",
        f"`python benchmarks/serving/bench_grpc.py` on {run['date']}: the platform's server "
        f"(`ours` of targets.py: tokens, metrics, access log, prediction log at its default "
        f"rate 1.0, a canary on 10% of keys) serving REST and gRPC from one process on CPU 0; "
        f"clients in one Python process on CPU 1, {run['concurrency']} callers in a closed "
        f"loop, {run['seconds']:g} s per cell after a warm-up, {run['repeats']} rounds with "
        f"the protocols interleaved; medians. Machine: {m['nproc']} cores, {m['cpu']}; load "
        f"average at start {m['loadavg_at_start']}, at end {m.get('loadavg_at_end')}. "
        f"Versions: {run['versions']}.", "",
        "REST bodies are JSON (FP32 `data` lists); gRPC requests carry the rows as "
        "`raw_input_contents` (what tritonclient and KServe's client send with NumPy input). "
        "The server's CPU time per request is the figure that compares the protocols; "
        "throughput and latency are those of a Python client and stated for context.", "",
        "| protocol | rows per request | server CPU us/req | server core share | req/s | "
        "p50 ms | p99 ms |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key in keys:
        protocol, n = key.split()
        lines.append(f"| {protocol} | {int(n):,} | {med(key, 'server_cpu_us_per_req'):,.0f} | "
                     f"{med(key, 'server_core_share'):.0%} | {med(key, 'rps'):,.0f} | "
                     f"{med(key, 'p50_ms'):.2f} | {med(key, 'p99_ms'):.2f} |")
    lines += ["", "`grpc-floor`: grpc.aio on uvloop answering every call with one prebuilt "
              "one-row reply, no work at all (what gRPC's Python server costs here per call, "
              "whatever it serves).", "",
              "| rows per request | gRPC / REST, server CPU per request |", "| ---: | ---: |"]
    for n in sorted({int(k.split()[1]) for k in keys if not k.startswith("grpc-floor")}):
        ratio = med(f"grpc {n}", "server_cpu_us_per_req") / med(f"rest {n}",
                                                               "server_cpu_us_per_req")
        lines.append(f"| {n:,} | {ratio:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
