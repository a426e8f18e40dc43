"""Files as the tests look at them: modes, and model artifacts edited behind the loader's back."""

from __future__ import annotations

import json
import os
import stat

from pipeline.model.artifact import artifact_checksums


def tamper(folder, *, meta=None, centroids=None, checksums=None):
    """Edit an artifact behind the loader's back and rewrite checksums.json to match, as
    someone with write access to the artifact store could: the checksums then hold, and only
    the loader's own checks stand between the files and the server."""
    if meta is not None:
        data = json.loads((folder / "model.json").read_text())
        meta(data)
        (folder / "model.json").write_text(json.dumps(data))
    if centroids is not None:
        with open(folder / "centroids.npy", "wb") as fh:
            centroids(fh)
    sums = artifact_checksums(folder)
    (folder / "checksums.json").write_text(json.dumps(checksums(sums) if checksums else sums))
    return folder


def file_mode(path) -> int:
    """The permission bits of ``path`` (e.g. 0o600)."""
    return stat.S_IMODE(os.stat(path).st_mode)
