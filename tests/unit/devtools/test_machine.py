"""The machine's CPU as the benchmark reports name it."""

from __future__ import annotations

import platform

from pipeline.devtools.machine import cpu_model, describe


def test_the_model_name_comes_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\n"
                    "model name\t: AMD EPYC 9B14\nflags\t\t: avx2\n\n"
                    "processor\t: 1\nmodel name\t: AMD EPYC 9B14\n")
    assert cpu_model(info) == "AMD EPYC 9B14"


def test_without_a_model_name_the_platform_says_what_it_can(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: \n")  # some ARM kernels leave it out
    expected = platform.processor() or platform.machine()
    assert cpu_model(info) == expected
    assert cpu_model(tmp_path / "absent") == expected


def test_the_report_line_names_cores_and_model():
    line = describe()
    cores, _, model = line.partition(" cores, ")
    assert int(cores) >= 1 and model == cpu_model()
