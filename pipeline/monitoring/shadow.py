"""The streaming shadow model: the champion's centroids, kept moving by the event stream.

A :class:`~pipeline.engine.streaming.StreamingKMeans` starts from the champion's centroids and
is updated with every batch the stream consumer accepts (``kmeans consume`` passes
:meth:`Shadow.observe` as an observer of :class:`~pipeline.data.sources.stream.Consumer`). It is
never served: its gap from the champion is the figure, a measure of how far the customers'
segments have moved since the champion was trained, between retrainings and without waiting for
the prediction log.

- **Same space as the champion.** Events go through the champion's own preprocessing (log1p,
  median imputation, standardisation): the shadow is updated with exactly what the champion
  assigns. Missing values are imputed with the training medians, as in training and serving
  (skipping those rows would shift the shadow away from the champion for a reason that is not
  drift); rows whose preprocessed values are not finite are skipped and counted.
- **Forgetting.** The half-life is counted in events (``KMEANS_SHADOW_HALF_LIFE_POINTS``).
  The shadow starts with the champion's centroids weighted by its training cluster shares times
  the memory of a model with that half-life (``1 / (1 - 0.5 ** (1 / h))``, about ``1.44 h``
  events): the champion counts as one memory's worth of customers, so the first batches do
  not throw its centroids away, and after a few half-lives only the stream counts.
- **Follows the champion.** The champion alias is checked at most every
  ``KMEANS_STREAM_MODEL_REFRESH_SECONDS``; a new version re-initialises the shadow from it.
- **The gap.** Per cluster, the distance between the shadow's centroid and the champion's, in
  model space, divided by the champion's **mean distance of a holdout point to its centroid**
  (``metrics.mean_distance`` in the model's metadata, measured at training): a shift of 1 means
  the segment's centre moved as far as a typical member lies from it. A model without that
  figure is scaled by its ``distance_p99`` (a larger scale: the shift reads smaller), else not
  at all; ``scale_source`` says which. ``max_shift`` and ``mean_shift`` summarise the clusters.
  Each cluster also reports its share of the shadow's weight beside its training share: a
  segment that vanishes shows there (its centroid only stops learning), not in the shifts.
- **State.** ``<home>/stream/shadow-<model>.json``, owner-only, rewritten atomically under a
  file lock after each batch: several consumers share one shadow, and a restarted consumer
  carries on. Every ``HISTORY_EVERY`` (5 minutes) the figures are also appended to
  ``shadow-<model>-history.jsonl`` (kept ``HISTORY_KEEP``, 8 days), so a monitoring window
  judges the shadow as it was in that window, the same when the window is re-run.

The monitoring window (:mod:`pipeline.monitoring.window`) reads :func:`shadow_figures` for its
interval; ``max_shift`` above ``KMEANS_MONITOR_MAX_SHADOW_SHIFT`` is a reason to retrain.
Redelivered batches (the stream is at-least-once) are seen again: they weigh twice.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import registry
from pipeline.core.io import (
    PRIVATE_FILE_MODE,
    append_line,
    atomic_write_bytes,
    file_lock,
    private_dir,
    utc_now,
)
from pipeline.core.settings import FEATURE_NAMES, Settings
from pipeline.data.sources.stream import stream_dir
from pipeline.engine.streaming import StreamingKMeans
from pipeline.model.kmeans_segments import SegmentModel

log = logging.getLogger(__name__)

STATE_FORMAT = 1
#: How often the figures are added to the history that monitoring windows read.
HISTORY_EVERY = dt.timedelta(minutes=5)
#: How long history entries are kept (a window older than this has no shadow figures).
HISTORY_KEEP = dt.timedelta(days=8)
#: Seconds an update waits for another consumer's update of the same shadow.
LOCK_WAIT_SECONDS = 60.0

#: Returns the current champion and its version, or None when there is none.
ChampionSource = Callable[[], tuple[SegmentModel, str] | None]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def state_path(settings: Settings) -> Path:
    return stream_dir(settings) / f"shadow-{_safe(settings.model_name)}.json"


def history_path(settings: Settings) -> Path:
    return stream_dir(settings) / f"shadow-{_safe(settings.model_name)}-history.jsonl"


def _lock_path(settings: Settings) -> Path:
    return stream_dir(settings) / f"shadow-{_safe(settings.model_name)}.lock"


# ---------------------------------------------------------------- the champion


def shift_scale(model: SegmentModel) -> tuple[float, str]:
    """The unit of the shadow's shifts for ``model``: its mean distance of a holdout point to
    its centroid, else its ``distance_p99``, else 1; and which one it is."""
    found: list[tuple[str, Any]] = [
        ("mean_distance", (model.metadata.get("metrics") or {}).get("mean_distance")),
        ("distance_p99", model.metadata.get("distance_p99"))]
    for source, value in found:
        if _positive(value):
            return float(value), source
    return 1.0, "unit"


def memory(half_life_points: float) -> float:
    """Total weight of a model fed one point at a time with this half-life, in the steady
    state: ``1 / (1 - 0.5 ** (1 / h))``, about ``1.44 h``.

    Examples
    --------
    >>> round(memory(10_000.0))
    14427
    """
    return 1.0 / (1.0 - 0.5 ** (1.0 / half_life_points))


def prior_weights(model: SegmentModel, half_life_points: float) -> np.ndarray:
    """The champion's centroids' starting weights: its training cluster shares (equal shares
    when the metadata has none) times :func:`memory`."""
    shares = model.metadata.get("cluster_shares")
    try:
        w = np.asarray(shares, dtype=np.float64)
        ok = w.shape == (model.k,) and np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        w = np.ones(model.k)
    return w / w.sum() * memory(half_life_points)


# ---------------------------------------------------------------- the shadow


class Shadow:
    """The stream consumer's observer that keeps the shadow model (see the module's text).

    ``champion`` returns the current champion and its version (default: a
    :class:`~pipeline.registry.ChampionFollower`, which looks the alias up at most every
    ``refresh_seconds``, default ``KMEANS_STREAM_MODEL_REFRESH_SECONDS``). When the saved state
    names another champion version than the one followed (another consumer saw a newer one),
    the alias is looked up at once through the source's ``refresh()``, when it has one.
    """

    def __init__(self, settings: Settings, *, half_life_points: float | None = None,
                 refresh_seconds: float | None = None,
                 champion: ChampionSource | None = None):
        self.settings = settings
        self.half_life_points = float(settings.monitoring.shadow_half_life_points
                                      if half_life_points is None else half_life_points)
        if not self.half_life_points > 0:
            raise ValueError(f"half_life_points={half_life_points!r} should be > 0")
        self._source = champion if champion is not None else registry.ChampionFollower(
            settings, refresh_seconds=refresh_seconds)
        self.model: SegmentModel | None = None
        self.version: str | None = None

    def _follow(self, *, force: bool = False) -> None:
        refresh = getattr(self._source, "refresh", None)
        found = refresh() if force and refresh is not None else self._source()
        if found is None:
            if self.version is not None:
                log.warning("no champion any more: the shadow model stops")
            self.model, self.version = None, None
        elif found[1] != self.version:
            self.model, self.version = found[0], str(found[1])
            log.info("shadow model follows champion version %s", self.version)

    def observe(self, accepted: pd.DataFrame, *, now: dt.datetime | None = None) -> None:
        """Update the shadow with a batch of the consumer's accepted rows (columns
        customer_id, event_timestamp, the features, created_timestamp) and save it."""
        if accepted is None or len(accepted) == 0:
            return
        self._follow()
        if self.model is None:
            return
        now = now or utc_now()
        with file_lock(_lock_path(self.settings), wait=LOCK_WAIT_SECONDS):
            state = read_state(self.settings)
            if state is not None and state["champion_version"] != self.version:
                self._follow(force=True)  # another consumer may have seen a newer champion
                if self.model is None:
                    return
            if state is None or state["champion_version"] != self.version:
                state = self._fresh_state(now)
            self._update(state, accepted, now)

    def _update(self, state: dict, accepted: pd.DataFrame, now: dt.datetime) -> None:
        assert self.model is not None
        raw = accepted[FEATURE_NAMES]
        x = np.asarray(self.model.preprocessor.transform(raw), dtype=np.float64)
        good = np.isfinite(x).all(axis=1)
        engine = StreamingKMeans.from_dict(state["engine"])
        if good.any():
            engine.update(x[good])
        state["engine"] = engine.to_dict()
        state["imputed"] += int((raw.isna().any(axis=1).to_numpy() & good).sum())
        state["skipped"] += int((~good).sum())
        state["updated_at"] = now.isoformat()
        private_dir(state_path(self.settings).parent)
        due = (state.get("history_at") is None
               or now - dt.datetime.fromisoformat(state["history_at"]) >= HISTORY_EVERY)
        if due:
            self._add_history(state, now)
        atomic_write_bytes(state_path(self.settings), json.dumps(state).encode(),
                           mode=PRIVATE_FILE_MODE)

    def _add_history(self, state: dict, now: dt.datetime) -> None:
        path = history_path(self.settings)
        pruned = state.get("pruned_at")
        if pruned is not None and now - dt.datetime.fromisoformat(pruned) > dt.timedelta(days=1):
            keep = [e for e in _read_history(path)
                    if now - dt.datetime.fromisoformat(e["at"]) <= HISTORY_KEEP]
            atomic_write_bytes(path, "".join(json.dumps(e) + "\n" for e in keep).encode(),
                               mode=PRIVATE_FILE_MODE)
            state["pruned_at"] = now.isoformat()
        elif pruned is None:
            state["pruned_at"] = now.isoformat()
        append_line(path, json.dumps({"at": now.isoformat(), **figures_of(state)}))
        state["history_at"] = now.isoformat()

    def _fresh_state(self, now: dt.datetime) -> dict:
        assert self.model is not None and self.version is not None
        model = self.model
        scale, source = shift_scale(model)
        engine = StreamingKMeans(half_life=self.half_life_points, time_unit="points").initialize(
            model.centroids.astype(np.float64), prior_weights(model, self.half_life_points))
        log.info("shadow model initialised from champion version %s (k=%d, half-life %g "
                 "events)", self.version, model.k, self.half_life_points)
        return {"format": STATE_FORMAT, "model": self.settings.model_name,
                "champion_version": self.version,
                "champion_centroids": model.centroids.astype(np.float64).tolist(),
                "cluster_ids": model.cluster_ids.tolist(), "scale": scale,
                "scale_source": source, "prior_weights": engine.weights_.tolist(),
                "engine": engine.to_dict(), "imputed": 0, "skipped": 0,
                "initialised_at": now.isoformat(), "updated_at": now.isoformat(),
                "history_at": None, "pruned_at": None}


# ---------------------------------------------------------------- reading


def read_state(settings: Settings) -> dict | None:
    """The saved shadow of ``settings.model_name``, or None (none yet, or one this code cannot
    read: it is then started again)."""
    path = state_path(settings)
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("shadow state %s is unreadable (%s); starting it again", path, err)
        return None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        log.warning("shadow state %s has another format; starting it again", path)
        return None
    return state


def figures_of(state: dict) -> dict[str, Any]:
    """The gap of a shadow state from its champion (see the module's text)."""
    engine = StreamingKMeans.from_dict(state["engine"])
    champion = np.asarray(state["champion_centroids"], dtype=np.float64)
    distance = np.linalg.norm(engine.centroids_ - champion, axis=1)
    shift = distance / float(state["scale"])
    shares = engine.weights_ / max(float(engine.weights_.sum()), 1e-300)
    prior = np.asarray(state["prior_weights"], dtype=np.float64)
    prior = prior / max(float(prior.sum()), 1e-300)
    return {"champion_version": state["champion_version"],
            "points": engine.n_points_, "batches": engine.n_batches_,
            "imputed": state["imputed"], "skipped": state["skipped"],
            "splits": engine.n_splits_, "half_life_points": engine.half_life,
            "scale": state["scale"], "scale_source": state["scale_source"],
            "max_shift": float(shift.max()), "mean_shift": float(shift.mean()),
            "clusters": [{"cluster": int(c), "shift": float(s), "distance": float(d),
                          "weight": float(w), "share": float(r), "champion_share": float(p)}
                         for c, s, d, w, r, p in zip(state["cluster_ids"], shift, distance,
                                                     engine.weights_, shares, prior,
                                                     strict=True)],
            "initialised_at": state["initialised_at"], "updated_at": state["updated_at"]}


def _read_history(path: Path) -> list[dict]:
    """The history's entries; a line cut short by a crash is skipped."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "at" in entry:
            out.append(entry)
    return out


def shadow_figures(settings: Settings, *, start: dt.datetime | None = None,
                   end: dt.datetime | None = None, version: str | None = None) -> dict | None:
    """The shadow's gap from its champion, or None.

    Without ``start`` and ``end``: as saved now. With them: the last history entry taken in
    ``[start, end)`` (a monitoring window; the same answer whenever it is asked, for
    ``HISTORY_KEEP``). ``version``: only a shadow of that champion version counts.
    """
    if (start is None) != (end is None):
        raise ValueError("give both start and end, or neither")
    if start is None or end is None:
        state = read_state(settings)
        if state is None or (version is not None and state["champion_version"] != version):
            return None
        return figures_of(state)
    found = None
    for entry in _read_history(history_path(settings)):
        at = dt.datetime.fromisoformat(entry["at"])
        if start <= at < end and (version is None or entry.get("champion_version") == version):
            if found is None or at >= dt.datetime.fromisoformat(found["at"]):
                found = entry
    return found


def _positive(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)
