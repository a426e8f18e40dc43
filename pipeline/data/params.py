"""The params of a run that works on one explicit interval of data: the ``kmeans_ingest_<source>``
DAGs (land it) and ``kmeans_monitoring`` (compute its window). One typed model, from which the
DAGs' ``Param``s are derived (:mod:`pipeline.orchestration.params`).

Light on purpose: the DAG files import it at parse time.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class IntervalParams(BaseModel):
    """An explicit interval ``[start, end)`` (UTC), or none: the run's own period."""

    model_config = ConfigDict(extra="forbid")

    start: dt.datetime | None = Field(
        None, description="Interval start (UTC), to (re)run any interval by hand; default: the "
                          "period that ended at the run's logical date.")
    end: dt.datetime | None = Field(None, description="Interval end (UTC, excluded); with start.")

    @field_validator("start", "end", mode="before")
    @classmethod
    def _instant(cls, value, info: ValidationInfo):
        # An ISO date-time; a naive one is UTC (the trigger form sends naive times).
        if value is None or value == "":
            return None
        if not isinstance(value, dt.datetime):
            try:
                value = dt.datetime.fromisoformat(str(value))
            except ValueError:
                raise ValueError(f"{info.field_name}={value!r} is not an ISO date-time") from None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value

    @model_validator(mode="after")
    def _both_or_neither(self) -> IntervalParams:
        if (self.start is None) != (self.end is None):
            raise ValueError("give both start and end (ISO date-times, UTC), or neither")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"end={self.end.isoformat()} must be after "
                             f"start={self.start.isoformat()}")
        return self

    @property
    def given(self) -> bool:
        """Whether the run names its interval (else it takes its own period)."""
        return self.start is not None
