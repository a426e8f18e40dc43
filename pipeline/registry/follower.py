"""Following the champion alias from a long-running process (the stream consumer)."""

from __future__ import annotations

import logging
import time

from pipeline.core.settings import Settings
from pipeline.model.artifact import SegmentModel
from pipeline.registry.client import alias_version
from pipeline.registry.models import download_model

log = logging.getLogger("pipeline.registry")  # one logger for the package, as before the split


class ChampionFollower:
    """The current champion for a long-running process (the stream consumer's segmenter and
    shadow model): ``()`` returns ``(model, version)``, or None while there is no champion. The
    alias is looked up at most every ``refresh_seconds`` (default
    ``KMEANS_STREAM_MODEL_REFRESH_SECONDS``) and the model downloaded only when it moved."""

    def __init__(self, settings: Settings, *, refresh_seconds: float | None = None):
        self.settings = settings
        self.refresh_seconds = (settings.stream.stream_model_refresh_seconds
                                if refresh_seconds is None else refresh_seconds)
        self._cached: tuple[SegmentModel, str] | None = None
        self._checked = -float("inf")

    def __call__(self) -> tuple[SegmentModel, str] | None:
        if time.monotonic() - self._checked < self.refresh_seconds:
            return self._cached
        return self.refresh()

    def refresh(self) -> tuple[SegmentModel, str] | None:
        """Look the alias up now, whenever it was last looked up (a caller that has seen a
        sign of a newer champion, e.g. another consumer's shadow state)."""
        self._checked = time.monotonic()
        found = alias_version(self.settings, "champion")
        if found is None:
            if self._cached is not None:
                log.warning("model %r has no champion any more", self.settings.model_name)
            self._cached = None
        elif self._cached is None or self._cached[1] != str(found.version):
            self._cached = download_model(self.settings, version=str(found.version))
            log.info("following champion version %s of %r", self._cached[1],
                     self.settings.model_name)
        return self._cached


