"""A process that used Spark ends quietly: its session is stopped in order (Python workers, the
context, the JVM) before the interpreter leaves, so no BrokenPipeError traceback from PySpark's
idle workers and no ERROR line from Spark or py4j follows the command's last line.

The Spark session runs in a subprocess of its own (as the CLI's and the demo's do), not in the
tests' shared session."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

from tests.helpers.processes import REPO

# A session started twice (the ordered stop leaves a process able to start another), Python
# jobs that leave reused workers idle, and an exit left to atexit. An atexit hook registered
# before the session runs after the engine's: it reports whether the JVM and the Python daemons
# it started were still there when the interpreter left.
SCRIPT = textwrap.dedent("""
    import atexit, logging, os, sys
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    started = []

    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    atexit.register(lambda: print("left at exit:", [p for p in started if alive(p)],
                                  flush=True))
    from pipeline.engine.session import _children, spark_session, stop_session

    def session_with_idle_workers():
        sc = spark_session("local[2]", app_name="shutdown-test", driver_memory="512m")
        sc = sc.sparkContext
        for _ in range(3):  # the same two workers, reused, then idle
            assert sc.parallelize(range(1000), 4).mapPartitions(
                lambda rows: [sum(rows)]).sum() == 499500
        jvm = sc._gateway.proc.pid
        daemons = [pid for pid, cmd in _children(jvm) if "daemon" in cmd]
        assert daemons, _children(jvm)
        started.extend([jvm, *daemons])
        return jvm, daemons

    first = session_with_idle_workers()
    stop_session()
    print("after stop_session:", [p for p in started if alive(p)], flush=True)
    second = session_with_idle_workers()
    assert second[0] != first[0]
    print("second session ready", flush=True)
""")

#: Lines that must not be on stderr: a traceback, PySpark's broken pipe, an ERROR from Spark's
#: JVM (log4j: ``yy/MM/dd HH:mm:ss ERROR Class: ...``), from py4j or PySpark (Python logging),
#: and Spark's "Setting default log level" notice (silenced in pipeline/engine/log4j2.properties).
NOISE = re.compile(r"Traceback|BrokenPipeError|Broken pipe|\bERROR\b|^ERROR (py4j|pyspark)"
                   r"|Setting default log level|sc\.setLogLevel", re.MULTILINE)


def test_a_process_that_used_spark_stops_it_in_order_and_exits_quietly(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "SPARK_LOCAL_IP": "127.0.0.1",
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    script = tmp_path / "spark_exit.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    out, err = done.stdout, done.stderr
    assert done.returncode == 0, (out, err)
    assert "after stop_session: []" in out, out  # stop_session: JVM and daemons gone
    assert "second session ready" in out, out
    assert "left at exit: []" in out, out  # atexit stopped the second one before the exit
    noise = [line for line in err.splitlines() if NOISE.search(line)]
    assert noise == [], err
