"""Data sources.

The offline feature table is written by the ingest stage (``kmeans ingest``), one Parquet
partition per day, into ``<home>/offline/customer_profile``. Feast resolves a relative FileSource
path against the repo path, which is this folder both under the ``feast`` CLI and in the pipeline,
so the declared path names the default home ``.kmeans`` beside this folder. When KMEANS_HOME is
elsewhere, the pipeline's ``apply_repo`` registers the absolute path of that home's table instead.

The stream consumer (``kmeans consume``, pipeline/data/sources/stream.py) writes each validated
event to the same offline table and pushes its features to the online store through the push
source ``customer_profile_push``, whose batch source is the file source: materialize and offline
reads work as before.
"""

from feast import FileSource, PushSource
from feast.data_format import ParquetFormat

customer_profile_source = FileSource(
    name="customer_profile_source",
    path="../.kmeans/offline/customer_profile",
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
    description="Daily customer behaviour snapshots, validated and landed by the ingest stage.",
)

customer_profile_push = PushSource(
    name="customer_profile_push",
    batch_source=customer_profile_source,
    description="Fresh customer features pushed by the stream consumer (kmeans consume) as "
                "events arrive; backed by the offline table for materialize and training.",
)
