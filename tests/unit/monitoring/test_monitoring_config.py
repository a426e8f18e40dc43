"""monitoring/drift.yaml documents the monitoring's settings: every value is the default."""

from __future__ import annotations

import yaml

from pipeline.core.settings import setting_fields
from tests.helpers.processes import REPO


def _leaves(node, out):
    for key, value in node.items():
        if isinstance(value, dict):
            _leaves(value, out)
        else:
            out[key] = value
    return out


def test_drift_yaml_names_real_settings_with_their_defaults():
    doc = yaml.safe_load((REPO / "monitoring" / "drift.yaml").read_text())
    leaves = _leaves({**doc["detection"], **doc["stream"], **doc["actions"]}, {})
    fields = setting_fields()
    assert len(leaves) == 13
    for name, value in leaves.items():
        assert name in fields, f"drift.yaml names {name}, which is no setting"
        assert fields[name].default == value, (name, value, fields[name].default)
    assert fields["model_name"].default == doc["model"]
