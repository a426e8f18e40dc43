"""The distance histogram counts a batch's rows in one update per bucket, exactly as one
observation per row would, and a big batch in full."""

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from pipeline.serving.metrics import observe_many

BOUNDS = (.25, .5, 1, 1.5, 2, 3, 4, 6, 8, 12)


def _exposed(observe) -> str:
    registry = CollectorRegistry()
    hist = Histogram("d", "distance", ["v"], registry=registry, buckets=BOUNDS).labels("7")
    observe(hist)
    return "\n".join(line for line in generate_latest(registry).decode().splitlines()
                     if not line.startswith("d_created"))


def test_a_batch_is_counted_as_one_observation_per_finite_row():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.gamma(2.0, 1.5, 5000), np.array(BOUNDS, dtype=np.float64),
                             [0.0, 12.000001, 1e9, np.inf, -np.inf, np.nan]])
    finite = values[np.isfinite(values)]

    def one_by_one(hist):
        for v in finite.tolist():
            hist.observe(v)

    batched = _exposed(lambda hist: observe_many(hist, values))
    _same_but_for_rounding(batched, _exposed(one_by_one))
    assert f'd_count{{v="7"}} {float(len(finite))}' in batched  # all 5,000+ rows, not a sample


def _same_but_for_rounding(a: str, b: str) -> None:
    """Equal line by line, the sums within float rounding (added in another order)."""
    for x, y in zip(a.splitlines(), b.splitlines(), strict=True):
        if x != y:
            name_x, value_x = x.rsplit(" ", 1)
            name_y, value_y = y.rsplit(" ", 1)
            assert name_x == name_y and name_x.startswith("d_sum"), (x, y)
            assert abs(float(value_x) - float(value_y)) <= 1e-9 * abs(float(value_y))


def test_small_and_empty_batches():
    assert "d_count{v=\"7\"} 0.0" in _exposed(lambda h: observe_many(h, np.array([np.nan])))
    text = _exposed(lambda h: observe_many(h, np.array([0.3, 5.0])))
    assert 'd_bucket{le="0.5",v="7"} 1.0' in text and 'd_count{v="7"} 2.0' in text
