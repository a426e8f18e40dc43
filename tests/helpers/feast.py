"""The stock ``feast`` CLI on a copy of the project's feature repo."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers.processes import REPO

FEAST = Path(sys.executable).parent / "feast"


def feast(repo: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(FEAST), *args], cwd=repo, capture_output=True, text=True,
                          timeout=timeout)


def copy_repo(root: Path) -> Path:
    repo = root / "feature_repo"
    shutil.copytree(REPO / "feature_repo", repo,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return repo
