"""Data sources.

The offline feature table is written by the ingest stage (``kmeans ingest``), one Parquet
partition per day. Its path is relative to the repo path, which the pipeline sets to KMEANS_HOME.
"""

from feast import FileSource
from feast.data_format import ParquetFormat

customer_profile_source = FileSource(
    name="customer_profile_source",
    path="offline/customer_profile",
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
    description="Daily customer behaviour snapshots, validated and landed by the ingest stage.",
)
