"""The prediction log samples requests at its rate: each request is logged with that chance,
independently, drawn as a count of requests to skip (a request that is not logged costs one
decrement). The counts over many requests stay within the binomial's bounds, and the gaps
between logged requests are geometric."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.serving.model import Prediction
from pipeline.serving.predlog import PredictionLog

ONE = np.array([0.5])
PRED = Prediction(cluster=np.array([1], np.int32), distance=ONE, runner_up=ONE, margin=ONE,
                  ood=np.array([False]), model_version=["3"])
ROW = np.array([[1.0, 2.0]])


def logged(plog: PredictionLog, requests: int) -> np.ndarray:
    """Which of ``requests`` one-row requests the log kept (True per kept request)."""
    kept = np.zeros(requests, bool)
    for r in range(requests):
        before = plog._filling.n
        plog.record(f"r-{r}", ROW, PRED, None)
        kept[r] = plog._filling.n > before
    return kept


@pytest.mark.parametrize("rate", [0.5, 0.1, 0.01])
def test_requests_are_logged_at_the_sample_rate_with_geometric_gaps(tmp_path, rate):
    plog = PredictionLog(tmp_path, ["a", "b"], sample_rate=rate, max_queue_rows=200_000)
    plog._random.seed(7)
    n = 100_000
    kept = logged(plog, n)
    sd = (n * rate * (1 - rate)) ** 0.5
    assert abs(kept.sum() - n * rate) < 5 * sd, (kept.sum(), n * rate)
    gaps = np.diff(np.flatnonzero(kept)) - 1  # requests skipped between two logged ones
    mean_gap = (1 - rate) / rate
    assert abs(gaps.mean() - mean_gap) < 5 * (mean_gap + 1) / len(gaps) ** 0.5
    # memoryless: a gap of 0 (two logged in a row) as often as the rate says
    assert abs((gaps == 0).mean() - rate) < 5 * (rate * (1 - rate) / len(gaps)) ** 0.5


def test_rate_one_logs_every_request_and_rate_zero_none(tmp_path):
    assert logged(PredictionLog(tmp_path, ["a", "b"], sample_rate=1.0), 500).all()
    assert not logged(PredictionLog(tmp_path, ["a", "b"], sample_rate=0.0), 500).any()


def test_a_new_rate_takes_effect_at_once_and_a_bad_one_is_refused(tmp_path):
    plog = PredictionLog(tmp_path, ["a", "b"], sample_rate=0.0)
    assert not logged(plog, 100).any()
    plog.sample_rate = 1.0
    assert logged(plog, 100).all()
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="sample_rate=.* should be within"):
            plog.sample_rate = bad
        with pytest.raises(ValueError, match="sample_rate=.* should be within"):
            PredictionLog(tmp_path, ["a"], sample_rate=bad)
