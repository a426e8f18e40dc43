"""Fixtures the integration tests share: settings with a ready MLflow store, a scratch schema of
the local PostgreSQL, a stream and consumer group of the local Redis."""

from __future__ import annotations

import uuid

import psycopg
import pytest
import redis
from psycopg import sql

from tests.helpers.homes import seed_mlflow_store
from tests.helpers.sources import REDIS_URL, SERVER


@pytest.fixture
def settings(settings):
    """The root ``settings``, with an empty MLflow store copied in (migrated once per session:
    MLflow's migrations take seconds for every new store). A test of how the platform creates
    its store uses ``make_settings`` on a folder of its own instead."""
    seed_mlflow_store(settings)
    return settings


@pytest.fixture(scope="module")
def client():
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as err:
        pytest.fail(f"no Redis at {REDIS_URL}: {err}")
    yield client
    client.close()


@pytest.fixture
def names(client):
    """A stream, group and consumer of this test alone; the stream is deleted afterwards."""
    tag = uuid.uuid4().hex[:10]
    out = {"stream_name": f"kmeans-test:{tag}", "stream_group": f"g-{tag}",
           "stream_consumer": f"c-{tag}"}
    yield out
    client.delete(out["stream_name"])


@pytest.fixture
def schema():
    """A schema of this test alone, with a connection string whose search path is it."""
    name = f"kmeans_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(SERVER, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    except psycopg.OperationalError as err:
        pytest.fail(f"no PostgreSQL at {SERVER}: {err}")
    yield name
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
