"""The S3 server of ``tests/standalone.py`` against pyarrow (the Spark cluster helper is
exercised by ``tests/test_spark_cluster.py``)."""

from __future__ import annotations

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow import fs as pafs

from tests.standalone import S3Server

pytestmark = pytest.mark.integration


def test_s3_server_round_trips_parquet_through_pyarrow(tmp_path, monkeypatch):
    table = pa.table({"customer_id": [1, 2, 3], "spend": [0.5, 1.5, 2.5]})
    with S3Server(tmp_path) as s3:
        s3.create_bucket("lake")
        fs = s3.filesystem()
        pq.write_table(table, "lake/snapshot/part-0.parquet", filesystem=fs)
        assert pq.read_table("lake/snapshot/part-0.parquet", filesystem=fs).equals(table)

        for name, value in s3.env().items():
            monkeypatch.setenv(name, value)
        uri_fs, path = pafs.FileSystem.from_uri(s3.uri("lake/snapshot"))
        assert path == "lake/snapshot"
        files = uri_fs.get_file_info(pafs.FileSelector(path))
        assert [info.base_name for info in files] == ["part-0.parquet"]
        assert pq.read_table(f"{path}/part-0.parquet", filesystem=uri_fs).equals(table)
    with pytest.raises(httpx.TransportError):
        httpx.get(s3.url, timeout=2)
