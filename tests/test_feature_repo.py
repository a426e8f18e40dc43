"""`feast plan` on the feature repo, as CI of a Feast repo runs it: declarations parse and
describe the objects the platform relies on."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.settings import PROJECT_ROOT

pytestmark = pytest.mark.integration


def test_feast_plan(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(PROJECT_ROOT / "feature_repo", repo,
                    ignore=shutil.ignore_patterns("__pycache__"))
    config = (repo / "feature_store.yaml").read_text()
    (repo / "feature_store.yaml").write_text(
        config.replace("../.kmeans/feast/", f"{tmp_path}/state/"))
    (tmp_path / "state").mkdir()
    feast = Path(sys.executable).parent / "feast"
    result = subprocess.run([str(feast), "plan", "--skip-source-validation"], cwd=repo,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for line in ("Created entity customer", "Created feature view customer_profile",
                 "Created feature service customer_segments_v1"):
        assert line in result.stdout, result.stdout
