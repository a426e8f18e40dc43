"""Data sources.

The offline feature table is written by the ingest stage (``kmeans ingest``), one Parquet
partition per day, into ``<home>/offline/customer_profile``. Feast resolves a relative FileSource
path against the repo path, which is this folder both under the ``feast`` CLI and in the pipeline,
so the declared path names the default home ``.kmeans`` beside this folder. When KMEANS_HOME is
elsewhere, the pipeline's ``apply_repo`` registers the absolute path of that home's table instead.
"""

from feast import FileSource
from feast.data_format import ParquetFormat

customer_profile_source = FileSource(
    name="customer_profile_source",
    path="../.kmeans/offline/customer_profile",
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
    description="Daily customer behaviour snapshots, validated and landed by the ingest stage.",
)
