"""fsspec's ``s3://`` through pyarrow's S3 client.

Feast's file offline store reads a FileSource through dask, and dask opens ``s3://`` with
fsspec, whose usual S3 implementation is ``s3fs``. ``s3fs`` needs ``aiobotocore`` and so
``botocore``, which requires ``python-dateutil<3``; ``kubernetes`` (the rollout's client)
requires ``>=3``, so the two cannot share an environment. This module gives fsspec an ``s3``
implementation on ``pyarrow.fs.S3FileSystem`` (the AWS SDK for C++, shipped in the pyarrow
wheel): the project's ``fsspec.specs`` entry point (pyproject.toml) registers :data:`S3`, so
every process of the environment has it (the pipeline, ``feast materialize``, ``feast serve``,
Airflow tasks) without importing anything first.

:data:`S3` is ``s3fs.S3FileSystem`` itself when ``s3fs`` is installed (an environment without
``kubernetes``): the entry point then changes nothing.

The options are s3fs's names for what Feast and dask pass (``storage_options``):
``key``/``secret``/``token``, ``anon``, ``endpoint_url`` or ``client_kwargs={"endpoint_url":
..., "region_name": ...}``. Without a key, the AWS SDK's usual chain applies (environment,
profile, instance or pod role).

Examples
--------
>>> import fsspec  # doctest: +SKIP
>>> fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": "http://127.0.0.1:9000"})
>>> fs.ls("bucket/offline")
"""

from __future__ import annotations

import importlib.util
from typing import Any
from urllib.parse import urlsplit

from fsspec.implementations.arrow import ArrowFSWrapper
from pyarrow import fs as pafs


def _endpoint(url: str) -> dict[str, str]:
    """``endpoint_override`` (and ``scheme``) of pyarrow's S3 from an endpoint URL."""
    if "://" not in url:
        return {"endpoint_override": url}
    parts = urlsplit(url)
    return {"endpoint_override": parts.netloc, "scheme": parts.scheme}


class ArrowS3FileSystem(ArrowFSWrapper):
    """fsspec's S3 interface over ``pyarrow.fs.S3FileSystem`` (s3fs's option names)."""

    protocol = ("s3", "s3a")
    root_marker = ""

    def __init__(self, key: str | None = None, secret: str | None = None,
                 token: str | None = None, anon: bool = False, endpoint_url: str | None = None,
                 client_kwargs: dict[str, Any] | None = None, region: str | None = None,
                 **kwargs: Any) -> None:
        client = dict(client_kwargs or {})
        options: dict[str, Any] = {}
        endpoint = endpoint_url or client.get("endpoint_url")
        if endpoint:
            options.update(_endpoint(str(endpoint)))
        region = region or client.get("region_name")
        if region:
            options["region"] = region
        if anon:
            options["anonymous"] = True
        elif key and secret:
            options.update(access_key=key, secret_key=secret)
            if token:
                options["session_token"] = token
        # s3fs's other options (caching, listing, async) have no meaning here.
        for name in ("use_listings_cache", "listings_expiry_time", "skip_instance_cache",
                     "asynchronous", "loop", "default_block_size", "default_fill_cache",
                     "version_aware", "use_ssl", "config_kwargs", "requester_pays"):
            kwargs.pop(name, None)
        super().__init__(pafs.S3FileSystem(**options), **kwargs)

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        text = str(path)
        for prefix in ("s3://", "s3a://"):
            if text.startswith(prefix):
                text = text[len(prefix):]
                break
        return text.split("?", 1)[0].rstrip("/")

    def _parent(self, path: str) -> str:
        path = self._strip_protocol(path)
        return path.rsplit("/", 1)[0] if "/" in path else ""

    def unstrip_protocol(self, name: str) -> str:
        return f"s3://{self._strip_protocol(name)}"


def _s3fs_installed() -> bool:
    return importlib.util.find_spec("s3fs") is not None


if _s3fs_installed():  # pragma: no cover - not in this project's environment
    from s3fs import S3FileSystem as S3
else:
    S3 = ArrowS3FileSystem
