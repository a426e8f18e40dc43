"""One output schema: every side that carries the segment output (the model's own code, the MLflow
signature, the server's v2 datatypes, the published table's Arrow schema and Spark DDL, the Feast
view) agrees with :mod:`pipeline.model.schema`, column by column and type by type.

The type mappings below are written out by hand on purpose: they check that the declaration's
columns are consistent across sides (an int64 is a long in MLflow and Spark, INT64 in v2, Int64 in
Feast), not only that each side copies the table.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import feast.types
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipeline.core.settings import FEATURE_NAMES
from pipeline.data import features
from pipeline.model import kmeans_segments, schema
from pipeline.model.kmeans_segments import Preprocessor, SegmentModel
from pipeline.promotion import publish
from pipeline.registry import model_signature
from pipeline.serving import protocol

REPO = Path(__file__).resolve().parents[3] / "feature_repo"

V2 = {"int64": "INT64", "float64": "FP64", "bool": "BOOL"}
MLFLOW = {"int64": "long", "float64": "double", "bool": "boolean"}
SQL = {pa.int64(): "long", pa.float64(): "double", pa.bool_(): "boolean", pa.string(): "string",
       pa.timestamp("us", tz="UTC"): "timestamp"}
FEAST = {pa.int64(): "Int64", pa.float64(): "Float64", pa.bool_(): "Bool", pa.string(): "String",
         pa.timestamp("us", tz="UTC"): "UnixTimestamp"}


@pytest.fixture(scope="module")
def model() -> SegmentModel:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.uniform(0, 1, (50, len(FEATURE_NAMES))), columns=FEATURE_NAMES)
    pre = Preprocessor.fit(frame, FEATURE_NAMES, log_features=[])
    return SegmentModel(rng.normal(size=(3, len(FEATURE_NAMES))), pre, {"distance_p99": 1.0})


def test_each_column_is_typed_alike_on_every_side():
    for c in schema.OUTPUTS:
        assert (c.v2, c.mlflow) == (V2[c.dtype], MLFLOW[c.dtype]), c.name
    for c in (*schema.OUTPUTS, *schema.PUBLISHED):
        assert c.sql == SQL[c.arrow], c.name
        assert c.feast is None or c.feast == FEAST[c.arrow], c.name


def test_the_model_returns_the_declared_outputs(model):
    assert kmeans_segments.OUTPUTS == schema.OUTPUT_NAMES
    found = model.assign(np.zeros((4, len(FEATURE_NAMES))))
    assert {c.name: str(getattr(found, c.name).dtype) for c in schema.OUTPUTS} == {
        c.name: c.dtype for c in schema.OUTPUTS}


def test_mlflow_signature_has_the_declared_outputs():
    outputs = model_signature(FEATURE_NAMES).outputs.to_dict()
    assert [(o["name"], o["type"]) for o in outputs] == [
        (c.name, c.mlflow) for c in schema.OUTPUTS]


def test_v2_outputs_are_the_declared_outputs_then_the_servers_own():
    assert list(protocol.OUTPUTS.items())[:len(schema.OUTPUTS)] == [
        (c.name, c.v2) for c in schema.OUTPUTS]
    assert list(protocol.OUTPUTS)[len(schema.OUTPUTS):] == ["model_version", "stale", "error"]


def test_published_table_has_the_declared_columns(model):
    published = [(c.name, c.arrow) for c in schema.PUBLISHED]
    assert list(zip(features.SEGMENT_SCHEMA.names, features.SEGMENT_SCHEMA.types,
                    strict=True)) == published
    ddl = [tuple(part.split(" ")) for part in publish.OUTPUT_DDL.split(", ")]
    assert ddl == [(name, SQL[arrow]) for name, arrow in published]
    outputs = [schema.PUBLISHED_AS[c.name] for c in schema.OUTPUTS if c.name in schema.PUBLISHED_AS]
    assert outputs == [n for n in features.SEGMENT_FIELDS if n in outputs]
    # What the job and the stream consumer write converts to that schema without a cast.
    seen = pd.Timestamp.now(tz="UTC").floor("us")
    rows = pd.DataFrame(np.ones((2, len(FEATURE_NAMES))), columns=FEATURE_NAMES).assign(
        customer_id=[1, 2], event_timestamp=seen - pd.Timedelta(hours=1))
    written = publish.segment_rows(model, rows, "3", seen)
    table = pa.Table.from_pandas(written, preserve_index=False)
    assert table.schema.names == features.SEGMENT_SCHEMA.names
    for name, arrow in published:
        assert table.schema.field(name).type.id == arrow.id, name


def _feature_repo_module(name: str, monkeypatch):
    """A module of feature_repo/ as the Feast CLI imports it (siblings by top-level name)."""
    monkeypatch.syspath_prepend(str(REPO))
    spec = importlib.util.spec_from_file_location(f"_feature_repo_{name}", REPO / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_feast_view_has_the_declared_fields(monkeypatch):
    segments = _feature_repo_module("segments", monkeypatch)
    view = segments.customer_segment
    assert view.name == features.SEGMENT_VIEW
    declared = [c for c in schema.PUBLISHED if c.feast]
    # Feast keeps a view's fields in an order of its own: compared by name.
    assert {f.name: (f.dtype, f.description) for f in view.schema} == {
        c.name: (getattr(feast.types, str(c.feast)), c.description) for c in declared}
    assert view.entities == [segments.customer.name] and [segments.customer.join_key] == [
        c.name for c in schema.PUBLISHED if c.feast is None and c.name != "event_timestamp"]
    assert segments.customer_segment_source.timestamp_field == "event_timestamp"

