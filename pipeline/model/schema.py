"""The segment output, declared once: each column's name, dtype and what every side that carries
it needs (the Open Inference Protocol v2 datatype, the MLflow signature's type, the Arrow and
Spark SQL types of the published table, the Feast type of the ``customer_segment`` view).

Every other home derives from these tables: the model signature
(:func:`pipeline.registry.model_signature`), the server's v2 metadata
(:data:`pipeline.serving.protocol.OUTPUTS`), the published table's Arrow schema
(:data:`pipeline.data.features.SEGMENT_SCHEMA`) and Spark DDL
(:data:`pipeline.promotion.publish.OUTPUT_DDL`). Two homes cannot import this module and are
checked against it by a test (``tests/unit/model/test_schema.py``): the model's own code,
``kmeans_segments.Assignment``, which travels with the logged model and imports only NumPy, and
``feature_repo/segments.py``, which a Feast repo keeps as plain declarations.

Example
-------
>>> [c.name for c in OUTPUTS]
['cluster', 'distance', 'runner_up', 'margin', 'ood']
>>> [c.name for c in PUBLISHED if c.feast]
['segment', 'distance', 'margin', 'ood', 'model_version', 'scored_at', 'features_at']
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pyarrow as pa

__all__ = ["Column", "OUTPUTS", "OUTPUT_NAMES", "PUBLISHED", "PUBLISHED_AS", "SEGMENT_FIELDS",
           "arrow_schema", "spark_ddl"]

_TIMESTAMP = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class Column:
    """One column of the segment output or of the published table.

    Attributes
    ----------
    name : str
        The column's name.
    dtype : str
        Its NumPy dtype (what :meth:`SegmentModel.assign` returns for an output).
    arrow : pyarrow.DataType
        Its Arrow type in the published table's Parquet files.
    sql : str
        Its Spark SQL type (the DDL of the publishing job's output).
    feast : str or None
        The name of its type in ``feast.types`` in the ``customer_segment`` view; None for a
        column that is not one of the view's features (the entity key, the event time).
    description : str
        What it holds (the Feast field's description).
    v2 : str or None
        Its Open Inference Protocol v2 datatype (model outputs only).
    mlflow : str or None
        Its type in the MLflow signature's output ``ColSpec`` (model outputs only).
    """

    name: str
    dtype: str
    arrow: pa.DataType
    sql: str
    feast: str | None
    description: str
    v2: str | None = None
    mlflow: str | None = None


#: The model's outputs, one per row scored, in this order.
OUTPUTS: tuple[Column, ...] = (
    Column("cluster", "int64", pa.int64(), "long", "Int64",
           "The customer's segment (cluster id).", v2="INT64", mlflow="long"),
    Column("distance", "float64", pa.float64(), "double", "Float64",
           "Distance to the segment's centroid.", v2="FP64", mlflow="double"),
    Column("runner_up", "int64", pa.int64(), "long", "Int64",
           "The next-nearest segment (cluster id).", v2="INT64", mlflow="long"),
    Column("margin", "float64", pa.float64(), "double", "Float64",
           "Distance to the runner-up centroid minus distance (small: near a boundary).",
           v2="FP64", mlflow="double"),
    Column("ood", "bool", pa.bool_(), "boolean", "Bool",
           "Beyond the model's 99th-percentile training distance.", v2="BOOL", mlflow="boolean"),
)
OUTPUT_NAMES: tuple[str, ...] = tuple(c.name for c in OUTPUTS)

#: The outputs the ``customer_segment`` view publishes, by the name it publishes them under
#: (applications read a customer's ``segment``; the runner-up is left out).
PUBLISHED_AS = {"cluster": "segment", "distance": "distance", "margin": "margin", "ood": "ood"}

#: The published table (``customer_segment``): the entity key and event time, the published
#: outputs, and who assigned them when.
PUBLISHED: tuple[Column, ...] = (
    Column("customer_id", "int64", pa.int64(), "long", None, "The customer (the entity key)."),
    Column("event_timestamp", "datetime64[us]", _TIMESTAMP, "timestamp", None,
           "When it was scored (the view's event time)."),
    *(dataclasses.replace(c, name=PUBLISHED_AS[c.name], v2=None, mlflow=None)
      for c in OUTPUTS if c.name in PUBLISHED_AS),
    Column("model_version", "str", pa.string(), "string", "String",
           "The registry version that assigned it."),
    Column("scored_at", "datetime64[us]", _TIMESTAMP, "timestamp", "UnixTimestamp",
           "When it was assigned."),
    Column("features_at", "datetime64[us]", _TIMESTAMP, "timestamp", "UnixTimestamp",
           "Time of the feature row it was assigned from."),
)

#: The features of the ``customer_segment`` view, as Feast names them.
SEGMENT_FIELDS: list[str] = [c.name for c in PUBLISHED if c.feast]


def arrow_schema(columns: tuple[Column, ...] = PUBLISHED) -> pa.Schema:
    """The Arrow schema of ``columns`` (default: the published table)."""
    return pa.schema([(c.name, c.arrow) for c in columns])


def spark_ddl(columns: tuple[Column, ...] = PUBLISHED) -> str:
    """The Spark SQL DDL of ``columns`` (default: the published table), e.g. ``"customer_id
    long, event_timestamp timestamp, ..."``."""
    return ", ".join(f"{c.name} {c.sql}" for c in columns)
