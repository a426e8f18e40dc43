"""The one atomic-write family, the one file lock, the one clock and local-or-store paths."""

import datetime as dt
import os
import re
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.io import (
    LockBusy,
    StorePath,
    StoreUnreachable,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_parquet,
    file_lock,
    temp_name,
    utc_now,
    utc_now_iso,
)
from pipeline.rollout.controller import RolloutController, RolloutError, state_path


def test_atomic_writes_replace_whole_files_and_leave_no_temporaries(tmp_path):
    target = tmp_path / "sub" / "f.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    atomic_write_json(target, {"c": 3})
    assert target.read_text() == '{\n  "c": 3\n}'
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    table = pa.table({"x": [1, 2, 3]})
    atomic_write_parquet(tmp_path / "t.parquet", table)
    assert pq.read_table(tmp_path / "t.parquet").equals(table)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["b.bin", "f.json", "sub",
                                                            "t.parquet"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_temporary_names_differ_per_call_and_name_host_and_process(tmp_path):
    names = {temp_name(tmp_path / "f.json").name for _ in range(100)}
    assert len(names) == 100
    name = next(iter(names))
    assert name.startswith(".f.json.") and name.endswith(".tmp") and f".{os.getpid()}." in name


def test_file_lock_excludes_another_thread_and_waits_when_asked(tmp_path):
    path = tmp_path / "locks" / "x.lock"
    held, release = threading.Event(), threading.Event()

    def holder():
        with file_lock(path) as fh:
            fh.write("holder-1")
            fh.flush()
            held.set()
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(5)
    with pytest.raises(LockBusy, match=r"x.lock is locked by another process or thread "
                                       r"\(waited 0 s for it\)"):
        with file_lock(path):
            pass
    assert path.read_text() == "holder-1", "the holder's note is readable by the refused"
    # a thread that sleeps, not threading.Timer: under faketime (which fakes the monotonic
    # clock) a timed Event.wait never times out, while time.sleep does
    threading.Thread(target=lambda: (time.sleep(0.3), release.set())).start()
    start = time.monotonic()
    with file_lock(path, wait=5):
        waited = time.monotonic() - start
    t.join()
    assert 0.2 < waited < 5, "took the lock once released, before its wait ran out"


def test_file_lock_excludes_another_process_and_is_freed_when_it_dies(tmp_path):
    path = tmp_path / "p.lock"
    code = ("import sys, time; from pipeline.core.io import file_lock\n"
            f"with file_lock({str(path)!r}):\n"
            "    print('held', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(LockBusy):
            with file_lock(path, wait=0.2):
                pass
    finally:
        child.kill()
        child.wait()
    with file_lock(path, wait=2):
        pass  # the operating system released the dead holder's lock


def test_file_lock_refuses_a_negative_wait(tmp_path):
    with pytest.raises(ValueError, match="wait=-1 should be >= 0 seconds"):
        with file_lock(tmp_path / "l", wait=-1):
            pass


def test_the_clock_is_utc_and_aware():
    now = utc_now()
    assert now.tzinfo is not None and now.utcoffset() == dt.timedelta(0)
    stamp = utc_now_iso()
    # seconds, and the offset of UTC: YYYY-MM-DDTHH:MM:SS+00:00
    assert stamp.endswith("+00:00")
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\+00:00", stamp), stamp
    assert abs(dt.datetime.fromisoformat(stamp) - now) < dt.timedelta(seconds=5)


def test_a_second_rollout_controller_is_refused_through_the_same_lock(settings):
    """The rollout controller's lock is file_lock: while one controller holds it, another
    refuses before touching the server or the registry (no backend is even needed)."""
    controller = RolloutController(settings, backend=None, steps=[])
    with file_lock(state_path(settings).with_suffix(".lock")):
        with pytest.raises(RolloutError, match="another rollout controller is running for "
                                               "'customer_segments'"):
            controller.start("2")


def test_a_store_path_on_the_local_disk_behaves_as_the_offline_writers_need(tmp_path):
    root = StorePath.at(tmp_path / "offline")
    assert root.local and str(root) == str(tmp_path / "offline") and not root.exists()
    table = pa.table({"a": [1, 2]})
    for name in ("day=1/x-1.parquet", "day=2/x-2.parquet", "day=2/y-1.parquet", "z.parquet"):
        (root / "t" / name).write_parquet(table, mode=0o600)
    t = root / "t"
    assert [p.relative_to(t) for p in t.glob("day=*/x-*.parquet")] \
        == ["day=1/x-1.parquet", "day=2/x-2.parquet"]
    assert [p.name for p in t.glob("*.parquet")] == ["z.parquet"]
    assert (t / "missing").glob("*") == []
    one = t / "day=1" / "x-1.parquet"
    assert one.is_file() and t.is_dir() and one.parent == t / "day=1" and one.stem == "x-1"
    assert os.stat(os.fspath(one)).st_mode & 0o777 == 0o600
    assert one.read_table().equals(table)
    one.unlink()
    one.unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError):
        one.unlink()
    assert not [p for p in tmp_path.rglob("*.tmp")]
    with pytest.raises(ValueError, match="is not in"):
        one.relative_to(root / "other")


def test_an_unreachable_store_is_one_line_naming_it():
    path = StorePath.at("s3://bucket/offline?endpoint_override=127.0.0.1:1&scheme=http")
    assert str(path) == "s3://bucket/offline" and not path.local
    with pytest.raises(StoreUnreachable, match=r"^s3://bucket/offline/t cannot be listed "
                                               r"\(OSError: .*127\.0\.0\.1"):
        (path / "t").glob("*.parquet")
    with pytest.raises(TypeError, match="object store"):
        os.fspath(path)
