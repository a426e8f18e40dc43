"""The parameters of a training run: one typed model, from which the DAG's ``Param``s and the
CLI's options are derived (:mod:`pipeline.orchestration.params`, :mod:`pipeline.cli`).

Light on purpose: the DAG files import it at parse time.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


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


def window(end: dt.datetime, lookback_days: int) -> tuple[dt.datetime, dt.datetime]:
    """The training window that ends at ``end`` (exclusive)."""
    if end.tzinfo is None:
        end = end.replace(tzinfo=dt.UTC)
    return end - dt.timedelta(days=lookback_days), end


def parse_params(params: dict) -> TrainParams:
    """The training params among a run's params (other keys, such as the window's, are left to
    their owners), validated; ValueError naming each bad value."""
    keys = TrainParams.model_fields
    try:
        return TrainParams(**{k: v for k, v in params.items() if k in keys})
    except ValidationError as err:
        raise ValueError("; ".join(f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']}"
                                   for e in err.errors())) from err
