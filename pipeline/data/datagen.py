"""Synthetic customer-behaviour data, written to the data lake as Parquet partitioned by day.

Customers belong to a few latent segments (loyal big spenders, bargain hunters, new customers,
dormant customers, window shoppers); each day a share of them is active and gets a behaviour
snapshot. Amounts are log-normal (skewed), activity is Poisson, a few values are missing.

Drift can be injected from a given period (a day of the lake, or a monitoring window) on, for
demos and for measuring the monitoring (:class:`Drift`):

- ``shift``: every segment spends 3x as much, browses 2x as much, waits 2x as long between
  orders and has a year more tenure (6 of 12 features move; the segment structure stays);
- ``new_segment``: a quarter of the customers turn into bulk buyers, a kind of customer the
  model has never seen (huge baskets, few sessions, many returns);
- ``vanished_segment``: the loyal big spenders stop coming (their share drops to 0);
- ``trend``: the shift, reached slowly: a tenth of it more each period, full after ten.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.core.io import atomic_write_parquet
from pipeline.core.settings import FEATURE_NAMES
from pipeline.data.lake import LAKE_TABLE

log = logging.getLogger(__name__)

# Per segment: (share, log-mean spend, orders/30d, sessions/30d, recency days, tenure days,
#               return rate, discount share, tickets/90d, mobile share, categories, email open)
_SEGMENTS = {
    "loyal_big_spenders": (0.15, 6.5, 9.0, 30.0, 3.0, 1400.0, 0.05, 0.10, 1.0, 0.55, 14.0, 0.55),
    "bargain_hunters": (0.25, 4.6, 5.0, 40.0, 8.0, 700.0, 0.12, 0.65, 0.6, 0.70, 9.0, 0.35),
    "new_customers": (0.20, 4.0, 1.5, 12.0, 12.0, 30.0, 0.03, 0.25, 0.3, 0.60, 4.0, 0.45),
    "dormant": (0.20, 2.5, 0.2, 2.0, 120.0, 1100.0, 0.02, 0.20, 0.2, 0.40, 1.0, 0.05),
    "window_shoppers": (0.20, 3.2, 0.6, 55.0, 45.0, 500.0, 0.08, 0.30, 0.4, 0.85, 22.0, 0.20),
}
SEGMENT_NAMES = list(_SEGMENTS)
# The segment that ``new_segment`` drift brings in; never part of the stationary population.
_NEW_SEGMENT = ("bulk_buyers",
                (0.0, 7.8, 25.0, 6.0, 2.0, 150.0, 0.35, 0.02, 4.0, 0.05, 2.0, 0.90))
_PARAMS = np.array([*_SEGMENTS.values(), _NEW_SEGMENT[1]])
_NAMES = np.array([*SEGMENT_NAMES, _NEW_SEGMENT[0]])
DRIFT_KINDS = ("shift", "new_segment", "vanished_segment", "trend")


@dataclass(frozen=True)
class Drift:
    """Drift of kind ``kind`` from period ``start`` on (periods before it are stationary).

    ``strength`` scales the shift (1.0: the full shift described in the module docstring);
    ``share`` is the share of customers that become the new segment; ``segment`` is the one
    that vanishes; ``ramp`` is the number of periods a trend takes to reach ``strength``.
    """

    kind: str
    start: int = 0
    strength: float = 1.0
    share: float = 0.25
    segment: str = "loyal_big_spenders"
    ramp: int = 10

    def __post_init__(self):
        if self.kind not in DRIFT_KINDS:
            raise ValueError(f"drift kind {self.kind!r} is not one of {', '.join(DRIFT_KINDS)}")
        if self.segment not in SEGMENT_NAMES:
            raise ValueError(f"segment {self.segment!r} is not one of {', '.join(SEGMENT_NAMES)}")
        if not (0.0 < self.share <= 1.0) or self.strength < 0 or self.ramp < 1:
            raise ValueError(f"share={self.share} must be in (0, 1], strength={self.strength} "
                             f">= 0 and ramp={self.ramp} >= 1")

    def level(self, period: int) -> float:
        """How much of the drift period ``period`` carries (0 before ``start``)."""
        if period < self.start:
            return 0.0
        if self.kind == "trend":
            return self.strength * min(1.0, (period - self.start + 1) / self.ramp)
        return self.strength

    def customers(self, customers: pd.DataFrame, period: int) -> pd.DataFrame:
        """The population of ``period``: segments moved in or out."""
        if self.level(period) == 0.0:
            return customers
        if self.kind == "vanished_segment":
            return customers[customers["segment"] != SEGMENT_NAMES.index(self.segment)]
        if self.kind == "new_segment":
            # the same customers turn, every period: a stable hash of the id, not the rng
            u = (customers["customer_id"].to_numpy() * 2654435761 % 2**32) / 2**32
            return customers.assign(segment=np.where(u < self.share, len(SEGMENT_NAMES),
                                                     customers["segment"].to_numpy()))
        return customers

    def rows(self, frame: pd.DataFrame, period: int) -> pd.DataFrame:
        """The behaviour of ``period``: features shifted (``shift``, ``trend``)."""
        s = self.level(period)
        if s == 0.0 or self.kind not in ("shift", "trend"):
            return frame
        return frame.assign(total_spend_30d=(frame.total_spend_30d * 3**s).round(2),
                            avg_order_value=(frame.avg_order_value * 3**s).round(2),
                            sessions_30d=(frame.sessions_30d * 2**s).round(0),
                            categories_browsed_30d=frame.categories_browsed_30d + round(6 * s),
                            tenure_days=frame.tenure_days + round(365 * s),
                            days_since_last_order=(frame.days_since_last_order * 2**s).round(0))


@dataclass(frozen=True)
class GeneratedLake:
    path: Path
    days: list[str]
    rows: int
    customers: int


def generate_customers(n_customers: int, rng: np.random.Generator) -> pd.DataFrame:
    """Draw each customer's latent segment and personal offsets (stable across days)."""
    shares = np.array([s[0] for s in _SEGMENTS.values()])
    segment = rng.choice(len(shares), size=n_customers, p=shares / shares.sum())
    return pd.DataFrame(
        {
            "customer_id": np.arange(1, n_customers + 1, dtype=np.int64) + 100_000,
            "segment": segment,
            "spend_offset": rng.normal(0.0, 0.35, n_customers),
            "activity_offset": rng.lognormal(0.0, 0.25, n_customers),
            "tenure_start": rng.uniform(0.5, 1.5, n_customers),
        }
    )


def _day_rows(customers: pd.DataFrame, day: dt.date, rng: np.random.Generator,
              active_share: float, missing_share: float) -> pd.DataFrame:
    active = customers[rng.random(len(customers)) < active_share]
    n = len(active)
    p = _PARAMS[active["segment"].to_numpy(), 1:]
    act = active["activity_offset"].to_numpy()
    orders = rng.poisson(p[:, 1] * act).astype(float)
    spend = np.where(
        orders > 0, rng.lognormal(p[:, 0] + active["spend_offset"].to_numpy(), 0.45), 0.0
    )
    frame = pd.DataFrame(
        {
            "customer_id": active["customer_id"].to_numpy(),
            "total_spend_30d": spend.round(2),
            "avg_order_value": np.where(orders > 0, spend / np.maximum(orders, 1), 0.0).round(2),
            "orders_30d": orders,
            "sessions_30d": rng.poisson(p[:, 2] * act).astype(float),
            "days_since_last_order": np.minimum(rng.exponential(p[:, 3]), 3000).round(0),
            "tenure_days": np.maximum(
                p[:, 4] * active["tenure_start"].to_numpy() + rng.normal(0, 20, n), 0
            ).round(0),
            "returns_30d": rng.binomial(orders.astype(int), np.clip(p[:, 5], 0, 1)).astype(float),
            "discount_share": np.clip(rng.beta(p[:, 6] * 8 + 0.5, (1 - p[:, 6]) * 8 + 0.5), 0, 1),
            "support_tickets_90d": rng.poisson(p[:, 7]).astype(float),
            "mobile_share": np.clip(rng.beta(p[:, 8] * 6 + 0.5, (1 - p[:, 8]) * 6 + 0.5), 0, 1),
            "categories_browsed_30d": rng.poisson(p[:, 9]).astype(float),
            "email_open_rate": np.clip(
                rng.beta(p[:, 10] * 6 + 0.3, (1 - p[:, 10]) * 6 + 0.3), 0, 1),
        }
    )
    # Missing values: tracking gaps hit a few behaviour columns.
    for col in ("avg_order_value", "sessions_30d", "email_open_rate", "mobile_share"):
        frame.loc[rng.random(n) < missing_share, col] = np.nan
    start = pd.Timestamp(day, tz="UTC")
    frame.insert(1, "event_timestamp", start + pd.to_timedelta(rng.uniform(0, 86_399, n), unit="s"))
    frame["created_timestamp"] = start + pd.Timedelta(days=1)
    frame["segment_truth"] = _NAMES[active["segment"].to_numpy()]
    return frame[["customer_id", "event_timestamp", *FEATURE_NAMES, "created_timestamp",
                  "segment_truth"]]


def period_rows(customers: pd.DataFrame, day: dt.date, *, period: int, seed: int,
                drift: Drift | None = None, active_share: float = 0.6,
                missing_share: float = 0.02) -> pd.DataFrame:
    """The activity rows of one period (a day of the lake, a monitoring window) of the
    population ``customers`` (:func:`generate_customers`), with ``drift`` applied from its
    start period on; the same arguments give the same rows."""
    rng = np.random.default_rng([seed, period])
    if drift is not None:
        customers = drift.customers(customers, period)
    frame = _day_rows(customers, day, rng, active_share, missing_share)
    return drift.rows(frame, period) if drift is not None else frame


def default_start(days: int) -> dt.date:
    """The first of the ``days`` days that end yesterday (UTC): the generated data ends today."""
    return dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days)


def generate_lake(
    lake_dir: Path,
    *,
    n_customers: int = 20_000,
    start: dt.date | None = None,
    days: int = 7,
    active_share: float = 0.6,
    missing_share: float = 0.02,
    seed: int = 7,
    drift: Drift | None = None,
) -> GeneratedLake:
    """Write ``days`` daily partitions of customer activity under ``lake_dir``.

    The days are ``start`` and the ``days - 1`` after it; without ``start``, the ``days`` days
    that end yesterday (UTC), so a daily training run scheduled today finds its whole window.
    Re-running with the same arguments rewrites the same files with the same content.
    ``drift`` injects drift from its ``start`` day (0: the first day) on.

    Examples
    --------
    >>> generate_lake(Path("/tmp/lake"), n_customers=1000, days=2)  # doctest: +SKIP
    """
    if n_customers < 1 or days < 1:
        raise ValueError(f"n_customers={n_customers} and days={days} must both be >= 1")
    if start is None:
        start = default_start(days)
    rng = np.random.default_rng(seed)
    customers = generate_customers(n_customers, rng)
    table_dir = Path(lake_dir) / LAKE_TABLE
    written, total = [], 0
    for i in range(days):
        day = start + dt.timedelta(days=i)
        frame = period_rows(customers, day, period=i, seed=seed, drift=drift,
                            active_share=active_share, missing_share=missing_share)
        atomic_write_parquet(table_dir / f"day={day.isoformat()}" / "part-00000.parquet",
                             pa.Table.from_pandas(frame, preserve_index=False))
        written.append(day.isoformat())
        total += len(frame)
    log.info("wrote %d rows for %d customers over %d days to %s", total, n_customers, days,
             table_dir)
    return GeneratedLake(path=table_dir, days=written, rows=total, customers=n_customers)
