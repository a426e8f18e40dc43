"""Feature preprocessing shared by training and serving: log1p for skewed columns, median
imputation, standardisation. Stored as plain JSON, never as a pickle."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from pipeline.core.settings import FEATURES

@dataclass(frozen=True)
class Preprocessor:
    feature_names: list[str]
    log_features: list[str]
    medians: list[float]
    means: list[float]
    stds: list[float]

    @classmethod
    def fit(cls, frame: pd.DataFrame, feature_names: list[str] | None = None) -> Preprocessor:
        names = list(feature_names or FEATURES)
        missing = [c for c in names if c not in frame.columns]
        if missing:
            raise ValueError(f"frame lacks feature columns {missing}")
        logs = [n for n in names if FEATURES.get(n, {}).get("log")]
        raw = frame[names].to_numpy(dtype=np.float64)
        raw = _log(raw, [n in logs for n in names])
        medians = np.nanmedian(raw, axis=0)
        if np.isnan(medians).any():
            empty = [n for n, m in zip(names, medians, strict=True) if np.isnan(m)]
            raise ValueError(f"feature columns {empty} have no values at all")
        filled = np.where(np.isnan(raw), medians, raw)
        stds = filled.std(axis=0)
        stds[stds == 0] = 1.0
        return cls(names, logs, medians.tolist(), filled.mean(axis=0).tolist(), stds.tolist())

    def __post_init__(self):
        # Arrays for transform, built once: the server calls it for every request.
        for name, value in (("_log_cols", np.flatnonzero([n in self.log_features
                                                           for n in self.feature_names])),
                            ("_medians", np.asarray(self.medians, dtype=np.float64)),
                            ("_means", np.asarray(self.means, dtype=np.float64)),
                            ("_stds", np.asarray(self.stds, dtype=np.float64))):
            object.__setattr__(self, name, value)

    def transform(self, data) -> np.ndarray:
        """Raw feature values (DataFrame or (n, d) array, NaN = missing) to model space."""
        if isinstance(data, pd.DataFrame):
            data = data[self.feature_names].to_numpy(dtype=np.float64)
        raw = np.array(data, dtype=np.float64)  # a copy: transformed in place below
        if raw.ndim != 2 or raw.shape[1] != len(self.feature_names):
            raise ValueError(f"expected shape (n, {len(self.feature_names)}), got {raw.shape}")
        cols = self._log_cols
        raw[:, cols] = np.log1p(np.maximum(raw[:, cols], 0.0))  # NaN stays NaN
        missing = np.isnan(raw)
        if missing.any():
            raw[missing] = np.broadcast_to(self._medians, raw.shape)[missing]
        raw -= self._means
        raw /= self._stds
        return raw.astype(np.float32)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessor:
        return cls(**data)


def _log(raw: np.ndarray, mask: list[bool]) -> np.ndarray:
    out = raw.copy()
    cols = np.flatnonzero(mask)
    out[:, cols] = np.log1p(np.clip(out[:, cols], 0, None))
    return out
