"""The server's own counters and histograms (plain numbers, read at scrape time) expose what
prometheus_client's would for the same updates, line for line; a batch's distances are
counted in one update per bucket, exactly as one observation per row, and in full."""

import doctest
import math

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from pipeline.serving import metrics
from pipeline.serving.metrics import LoopCounter, LoopHistogram, Metrics, _LoopCollector

BOUNDS = (.25, .5, 1, 1.5, 2, 3, 4, 6, 8, 12)


def _text(registry) -> list[str]:
    """The exposition without prometheus_client's ``_created`` series (ours has none)."""
    return [line for line in generate_latest(registry).decode().splitlines()
            if "_created" not in line]


def _ours(*families) -> list[str]:
    registry = CollectorRegistry()
    registry.register(_LoopCollector(families))
    return _text(registry)


def _theirs(build) -> list[str]:
    registry = CollectorRegistry()
    build(registry)
    return _text(registry)


def test_a_counter_exposes_what_prometheus_clients_would():
    ours = LoopCounter("kmeans_x_total", "Things by route", ["route", "status"])
    for route, status, n in (("infer", "200", 1), ("infer", "400", 2), ("infer", "200", 3.5)):
        ours.inc((route, status), n)

    def theirs(registry):
        c = Counter("kmeans_x_total", "Things by route", ["route", "status"], registry=registry)
        for route, status, n in (("infer", "200", 1), ("infer", "400", 2), ("infer", "200", 3.5)):
            c.labels(route, status).inc(n)

    assert _ours(ours) == _theirs(theirs)
    unlabelled = LoopCounter("kmeans_y_total", "Ys")
    unlabelled.inc()
    assert "kmeans_y_total 1.0" in _ours(unlabelled)


def test_a_histogram_exposes_what_prometheus_clients_would_for_the_same_values():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.gamma(2.0, 1.5, 3000), np.array(BOUNDS, dtype=np.float64),
                             [0.0, -1.0, 12.000001, 1e9]])
    ours = LoopHistogram("d", "distance", ["v"], BOUNDS)
    for value in values.tolist():
        ours.observe(("7",), value)

    def theirs(registry):
        hist = Histogram("d", "distance", ["v"], registry=registry, buckets=BOUNDS).labels("7")
        for value in values.tolist():
            hist.observe(value)

    _same_but_for_rounding(_ours(ours), _theirs(theirs))
    assert ours.upper_bounds == (*BOUNDS, math.inf)


def test_a_batch_is_counted_as_one_observation_per_finite_row():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.gamma(2.0, 1.5, 5000), np.array(BOUNDS, dtype=np.float64),
                             [0.0, 12.000001, 1e9, np.inf, -np.inf, np.nan]])
    finite = values[np.isfinite(values)]
    batched, one_by_one = (LoopHistogram("d", "distance", ["v"], BOUNDS) for _ in range(2))
    batched.observe_many(("7",), values)
    for value in values.tolist():  # the non-finite ones are left out here too
        one_by_one.observe(("7",), value)
    text = _ours(batched)
    _same_but_for_rounding(text, _ours(one_by_one))
    assert f'd_count{{v="7"}} {float(len(finite))}' in text  # all 5,000+ rows, not a sample


def test_small_and_empty_batches():
    empty = LoopHistogram("d", "distance", ["v"], BOUNDS)
    empty.observe_many(("7",), np.array([np.nan]))
    assert not any(line.startswith("d_count") for line in _ours(empty))
    small = LoopHistogram("d", "distance", ["v"], BOUNDS)
    small.observe_many(("7",), np.array([0.3, 5.0]))
    text = _ours(small)
    assert 'd_bucket{le="0.5",v="7"} 1.0' in text and 'd_count{v="7"} 2.0' in text


def test_bounds_must_be_finite_and_increasing():
    for bad in ((1, 0.5), (0.5, 0.5), (0.5, math.inf)):
        try:
            LoopHistogram("d", "distance", ["v"], bad)
        except ValueError as err:
            assert "finite and increasing" in str(err)
        else:
            raise AssertionError(f"bounds {bad} were accepted")


def test_the_servers_registry_names_every_series_once():
    text = "\n".join(_text(Metrics().registry))
    for name in ("kmeans_requests_total", "kmeans_request_latency_seconds",
                 "kmeans_assignments_total", "kmeans_distance", "kmeans_ood_total",
                 "kmeans_lookup_ids_total", "kmeans_inflight_requests"):
        assert text.count(f"# TYPE {name} ") == 1, name


def _same_but_for_rounding(a: list[str], b: list[str]) -> None:
    """Equal line by line, the sums within float rounding (added in another order)."""
    assert len(a) == len(b), (a, b)
    for x, y in zip(a, b, strict=True):
        if x != y:
            name_x, value_x = x.rsplit(" ", 1)
            name_y, value_y = y.rsplit(" ", 1)
            assert name_x == name_y and name_x.startswith("d_sum"), (x, y)
            assert abs(float(value_x) - float(value_y)) <= 1e-9 * abs(float(value_y))


def test_the_modules_examples_hold():
    found = doctest.testmod(metrics)
    assert found.attempted >= 4 and found.failed == 0


def test_a_batch_counts_every_row_by_version_and_cluster():
    """Metrics.observe of many rows (Counter for a few hundred, np.unique beyond; masks only
    when rows failed or two versions answered, from the canary's rows when the request was
    split, else from the per-row versions) counts what one row at a time would."""
    from pipeline.serving.model import Prediction

    rng = np.random.default_rng(5)
    for n, two, errors in ((3, False, False), (300, False, False), (40, True, False),
                           (500, True, True)):
        cluster = rng.integers(0, 6, n)
        distance = rng.gamma(2.0, 1.0, n)
        ood = rng.random(n) < 0.2
        versions = [("2" if two and i % 3 == 0 else "1") for i in range(n)]
        error = [("gone" if errors and i % 7 == 0 else "") for i in range(n)] if errors else None
        expected: dict = {}
        for i in range(n):
            if error is None or not error[i]:
                key = (versions[i], str(int(cluster[i])))
                expected[key] = expected.get(key, 0) + 1
        kept = [i for i in range(n) if error is None or not error[i]]
        canary = np.array([v == "2" for v in versions])
        for split in ((None, canary) if two else (None,)):
            m = Metrics()
            m.observe(Prediction(cluster, distance, cluster, distance, ood, versions,
                                 error=error, versions_used=("1", "2") if two else ("1",),
                                 canary_rows=split))
            assert m.assignments.values == expected
            assert sum(m.ood.values.values()) == sum(bool(ood[i]) for i in kept)
            counts = sum(sum(row[:-1]) for row in m.distance.rows.values())
            assert counts == len(kept)
            assert m.unknown.values.get((), 0) == n - len(kept)
            by_version = {v: sum(row[:-1]) for (v,), row in m.distance.rows.items()}
            assert by_version == {v: sum(versions[i] == v and np.isfinite(distance[i])
                                         for i in kept) for v in set(versions)}
