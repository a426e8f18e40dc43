"""The published segments: every customer's current segment, for applications that read it
through Feast instead of calling the model.

``kmeans publish-segments`` (and the training DAG after a promotion) scores every customer's
latest features with the champion in a Spark job and writes one Parquet folder per publication
to ``<home>/offline/customer_segment/published=<time>-v<version>/``, then materializes this
view to the online store. An empty schema file (``empty.parquet``) keeps the table readable
before the first publication.

Between publications the stream consumer (``kmeans consume``) assigns each fresh event with the
same champion and pushes the customer's new segment through ``customer_segment_push`` to the
online store, so a customer's segment follows their activity within seconds. The offline
history holds the batch publications.

The fields are the published table's, declared once in ``pipeline/model/schema.py``
(``PUBLISHED``: name, Feast type, description); this repo stays plain declarations, as the
``feast`` CLI reads it, and ``tests/unit/model/test_schema.py`` checks that the two agree.
"""

from datetime import timedelta

from entities import customer
from feast import FeatureView, Field, FileSource, PushSource
from feast.data_format import ParquetFormat
from feast.types import Bool, Float64, Int64, String, UnixTimestamp

customer_segment_source = FileSource(
    name="customer_segment_source",
    path="../.kmeans/offline/customer_segment",
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    description="Each customer's segment as the champion assigned it, one folder per "
                "publication (event_timestamp: when it was scored).",
)

customer_segment_push = PushSource(
    name="customer_segment_push",
    batch_source=customer_segment_source,
    description="Segments of fresh events, assigned by the stream consumer with the champion; "
                "backed by the publications for materialize and offline reads.",
)

customer_segment = FeatureView(
    name="customer_segment",
    entities=[customer],
    ttl=timedelta(days=30),
    schema=[
        Field(name="segment", dtype=Int64, description="The customer's segment (cluster id)."),
        Field(name="distance", dtype=Float64, description="Distance to the segment's centroid."),
        Field(name="margin", dtype=Float64,
              description="Distance to the runner-up centroid minus distance (small: near a "
                          "boundary)."),
        Field(name="ood", dtype=Bool,
              description="Beyond the model's 99th-percentile training distance."),
        Field(name="model_version", dtype=String, description="The registry version that "
                                                              "assigned it."),
        Field(name="scored_at", dtype=UnixTimestamp, description="When it was assigned."),
        Field(name="features_at", dtype=UnixTimestamp,
              description="Time of the feature row it was assigned from."),
    ],
    online=True,
    # The push source: the consumer's near-real-time segments reach this view; its batch
    # source (the publications) serves materialize and point-in-time reads.
    source=customer_segment_push,
    tags={"owner": "segmentation", "team": "ml-platform"},
)
