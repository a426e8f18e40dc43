"""The access log keeps a buffer of its own even when the process's stdout has none
(PYTHONUNBUFFERED, as the images set it): one write(2) per flush, not per request."""

import os

from pipeline.serving.asgi import buffered


def test_an_unbuffered_stream_gets_a_buffer_and_keeps_its_file(tmp_path):
    path = tmp_path / "access.log"
    raw = open(path, "wb", buffering=0)  # noqa: SIM115 - what sys.stdout.buffer is under -u
    log = buffered(raw)
    assert log is not raw
    log.write(b'{"status": 200}\n')
    assert path.read_bytes() == b"", "a line waits in the buffer"
    log.flush()
    assert path.read_bytes() == b'{"status": 200}\n'
    log.close()
    os.fstat(raw.fileno())  # the stream's own descriptor is still open
    raw.write(b"more\n")
    raw.close()
    assert path.read_bytes().endswith(b"more\n")


def test_a_buffered_stream_is_used_as_it_is(tmp_path):
    with open(tmp_path / "access.log", "wb") as stream:
        assert buffered(stream) is stream
