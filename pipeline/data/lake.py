"""The data lake as the product reads it: the one table that ingest lands, by day.

The lake holds ``<lake>/<LAKE_TABLE>/day=YYYY-MM-DD/*.parquet``; upstream systems write it, and
so does the sample-data generator (:mod:`pipeline.data.datagen`), which takes the name from
here: the product owns the name, the generator is one of its writers.
"""

#: The lake table that :func:`pipeline.data.ingest.ingest_lake` lands in the offline feature table.
LAKE_TABLE = "customer_activity"
