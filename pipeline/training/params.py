"""The parameters of a training run: one typed model per group, from which the DAG's ``Param``s
and the CLI's options are derived (:mod:`pipeline.orchestration.params`, :mod:`pipeline.cli`):
:class:`TrainParams` (the K sweep) and :class:`WindowParams` (the data it trains on).

Light on purpose: the DAG files import it at parse time.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.core.params import parse


class TrainParams(BaseModel):
    """Parameters of a training run (the DAG's params, the CLI's options)."""

    model_config = ConfigDict(extra="forbid")

    k_min: int = Field(2, ge=2, le=256, description="Smallest K of the sweep.")
    k_max: int = Field(8, ge=2, le=256, description="Largest K of the sweep.")
    sample_fraction: float = Field(1.0, gt=0, le=1, description="Share of training rows used.")
    max_iter: int = Field(50, ge=1, le=1000, description="Most Lloyd iterations per K.")
    n_init: int = Field(1, ge=1, le=20, description="Initialisations per K; best inertia kept.")
    seed: int = Field(42, ge=0, description="Seed of initialisation, sampling and the split.")
    engine: Literal["spark", "local"] = Field("spark", description="Spark or in-process.")
    init: Literal["k-means||", "k-means++"] = Field("k-means||", description="Initialisation.")
    empty_cluster: Literal["farthest", "split"] = Field(
        "farthest", description="Where an emptied centroid goes: farthest point, or split the "
        "largest cluster. Every move is reported in the model's metadata.")

    @model_validator(mode="after")
    def _range(self) -> TrainParams:
        if self.k_max < self.k_min:
            raise ValueError(f"k_max={self.k_max} should be >= k_min={self.k_min}")
        return self


class WindowParams(BaseModel):
    """The window a training run trains on (the training DAG's params beside
    :class:`TrainParams`'): ``lookback_days`` days that end at the run's interval end, or at
    ``end_date``."""

    model_config = ConfigDict(extra="forbid")

    lookback_days: int = Field(7, ge=1, le=365,
                               description="Days of data that end at the interval end.")
    end_date: dt.date | None = Field(None, description="Optional window end (YYYY-MM-DD); "
                                                       "default: the data interval end.")
    reason: str | None = Field(None, max_length=1000,
                               description="Why this run (kmeans_monitoring says which figures "
                                           "drifted); logged by the window task.")

    @field_validator("end_date", mode="before")
    @classmethod
    def _day(cls, value):
        # A date-time names its day (the trigger form and a conf may send either).
        if value is None or value == "":
            return None
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
        try:
            return dt.datetime.fromisoformat(str(value)).date()
        except ValueError:
            raise ValueError(f"end_date={value!r} is not a date (YYYY-MM-DD)") from None


def window(end: dt.datetime, lookback_days: int) -> tuple[dt.datetime, dt.datetime]:
    """The training window that ends at ``end`` (exclusive)."""
    if end.tzinfo is None:
        end = end.replace(tzinfo=dt.UTC)
    return end - dt.timedelta(days=lookback_days), end


def parse_params(params: dict) -> TrainParams:
    """The training params among a run's params (other keys, such as the window's, are left to
    their owners), validated; ValueError naming each bad value."""
    return parse(TrainParams, params, only_known=True)
