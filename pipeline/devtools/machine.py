"""What the benchmarks say about the machine they ran on.

``platform.processor()`` is empty on many Linux builds (it reads ``uname -p``), so reports
printed the bare architecture (``x86_64``): a Xeon and an EPYC looked alike, though their
figures differ by up to 2x. The CPU's model name comes from ``/proc/cpuinfo`` instead.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name (``AMD EPYC ...``, ``Intel(R) Xeon(R) ...``); where the system
    does not say, ``platform.processor()`` or else the architecture."""
    try:
        with cpuinfo.open() as lines:
            for line in lines:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    if name:
                        return name
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> str:
    """``<n> cores, <model>``: one line for a report's header."""
    return f"{os.cpu_count()} cores, {cpu_model()}"
