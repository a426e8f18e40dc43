"""Data sources: the lake, databases and event streams that feed the offline feature table.

One landing contract for every source: rows land for one explicit interval ``[start, end)``
(a lake's days, a database's watermark range, a stream's batch), validated by the ingest rules
(:func:`pipeline.data.ingest.split_valid`). Good rows go to the offline table
(``<home>/offline/customer_profile/day=<day>/``, one file per source and interval, beside the
others: Feast reads them all), bad rows to quarantine (``<home>/rejected/...``) with a
``reject_reason``, never dropped silently, and the counts (rows, accepted, rejected, reasons)
are reported. Landing the same interval again replaces exactly its own earlier output, so a
re-run gives the same files.

- :mod:`.postgres`: a PostgreSQL table or query, read incrementally by a watermark column.
- :mod:`.stream`: Redis Streams (or Kafka) events, at-least-once with idempotent writes.
"""
