"""The model artifact: centroids as NPY, preprocessing and metadata as JSON, with checksums.

No pickle anywhere: a folder with ``centroids.npy``, ``model.json`` and ``checksums.json``.
Loading verifies every checksum and refuses a modified or incomplete artifact. (The checksums
travel with the files: they catch corruption and edits of one file, not someone who rewrites
the checksums too; that needs the registry's access control.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.io import atomic_write_bytes, atomic_write_json, file_sha256
from pipeline.engine.kernel import score_small
from pipeline.model.preprocessing import Preprocessor

FORMAT_VERSION = 1
FILES = ("centroids.npy", "model.json")
SMALL_BATCH = 16  # up to this many rows, one compiled pass beats the NumPy/BLAS path


class ArtifactError(ValueError):
    """The artifact is missing, incomplete or does not match its checksums."""


@dataclass
class Assignment:
    cluster: np.ndarray
    distance: np.ndarray
    runner_up: np.ndarray
    margin: np.ndarray
    ood: np.ndarray


class SegmentModel:
    """Fitted centroids plus the preprocessing that maps raw features to model space."""

    def __init__(self, centroids: np.ndarray, preprocessor: Preprocessor, metadata: dict):
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.preprocessor = preprocessor
        self.metadata = metadata
        self.feature_names = preprocessor.feature_names
        self.k = len(self.centroids)
        # Stable cluster ids (matched to the previous champion); row i answers as cluster_ids[i].
        self.cluster_ids = np.asarray(metadata.get("cluster_ids", range(self.k)), dtype=np.int64)
        if self.cluster_ids.shape != (self.k,):
            raise ArtifactError(f"cluster_ids has {len(self.cluster_ids)} entries for k={self.k}")
        self.ood_threshold = float(metadata.get("distance_p99", np.inf))
        self._c2 = np.einsum("ij,ij->i", self.centroids, self.centroids)

    def save(self, folder: Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "centroids.npy", "wb") as fh:
            np.save(fh, self.centroids, allow_pickle=False)
        atomic_write_json(folder / "model.json", {
            **self.metadata, "format_version": FORMAT_VERSION, "k": self.k,
            "cluster_ids": self.cluster_ids.tolist(),
            "preprocessing": self.preprocessor.to_dict()})
        sums = {name: file_sha256(folder / name) for name in FILES}
        atomic_write_bytes(folder / "checksums.json", json.dumps(sums, indent=2).encode())
        return folder

    @classmethod
    def load(cls, folder: Path) -> SegmentModel:
        folder = Path(folder)
        try:
            expected = json.loads((folder / "checksums.json").read_text())
        except (OSError, ValueError) as err:
            raise ArtifactError(f"artifact {folder} has no readable checksums.json") from err
        for name in FILES:
            path = folder / name
            if not path.exists():
                raise ArtifactError(f"artifact {folder} lacks {name}")
            actual = file_sha256(path)
            if actual != expected.get(name):
                raise ArtifactError(
                    f"artifact {folder}: {name} has sha256 {actual[:12]}…, checksums.json says "
                    f"{str(expected.get(name))[:12]}…; refusing a modified artifact")
        meta = json.loads((folder / "model.json").read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"artifact format_version={meta.get('format_version')}, "
                                f"this code reads {FORMAT_VERSION}")
        centroids = np.load(folder / "centroids.npy", allow_pickle=False)
        pre = Preprocessor.from_dict(meta.pop("preprocessing"))
        if centroids.shape != (meta["k"], len(pre.feature_names)):
            raise ArtifactError(f"centroids shape {centroids.shape} does not match "
                                f"k={meta['k']} and {len(pre.feature_names)} features")
        return cls(centroids, pre, meta)

    def assign_scaled(self, x: np.ndarray) -> Assignment:
        """Nearest and runner-up centroid of rows already in model space (vectorized)."""
        d2 = self._c2 - 2.0 * (x @ self.centroids.T) + np.einsum("ij,ij->i", x, x)[:, None]
        rows = np.arange(len(x))
        best = d2.argmin(axis=1)
        first = d2[rows, best]
        if self.k > 1:  # the runner-up: the nearest once the best is masked
            d2[rows, best] = np.inf
            second = d2.argmin(axis=1)
            runner = d2[rows, second]
        else:
            second, runner = best, first
        dist = np.sqrt(np.maximum(first, 0.0))
        dist2nd = np.sqrt(np.maximum(runner, 0.0))
        ids = self.cluster_ids
        return Assignment(ids[best], dist, ids[second], dist2nd - dist, dist > self.ood_threshold)

    def assign(self, raw) -> Assignment:
        """Assign raw feature rows (DataFrame or array; NaN = missing, imputed)."""
        if isinstance(raw, np.ndarray) and raw.ndim == 2 and len(raw) <= SMALL_BATCH and \
                raw.shape[1] == len(self.feature_names):
            return self._assign_small(raw)
        return self.assign_scaled(self.preprocessor.transform(raw))

    def _assign_small(self, raw: np.ndarray) -> Assignment:

        pre = self.preprocessor
        best, second, d1, d2 = score_small(np.ascontiguousarray(raw, dtype=np.float64),
                                           pre._log_cols, pre._medians, pre._means, pre._stds,
                                           self.centroids)
        dist, dist2nd = np.sqrt(d1), np.sqrt(d2)
        ids = self.cluster_ids
        return Assignment(ids[best], dist, ids[second], dist2nd - dist, dist > self.ood_threshold)
