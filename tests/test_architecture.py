"""The package's order: layers (import-linter), imports at module top, lint and types clean."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import LAZY_IMPORTS

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _function_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    out = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {"." if node.level else node.module.split(".")[0]}
            else:
                continue
            if not roots <= LAZY_IMPORTS:
                out.append((node.lineno, ast.unparse(node)))
    return out


def test_imports_sit_at_module_top_except_the_lazy_heavy_libraries():
    found = {str(p.relative_to(ROOT)): hits for p in sorted((ROOT / "pipeline").rglob("*.py"))
             if (hits := _function_imports(p))}
    assert not found, (f"imports inside functions (only {sorted(LAZY_IMPORTS)} may be imported "
                       f"lazily): {found}")


def test_the_scanner_sees_a_function_level_import(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    import json\n    import mlflow\n    return json\n")
    assert _function_imports(sample) == [(2, "import json")]


@pytest.mark.parametrize("command", [
    ["lint-imports"],
    ["ruff", "check", "pipeline", "dags", "tests", "benchmarks", "feature_repo"],
    ["mypy", "pipeline"],
], ids=["import-linter", "ruff", "mypy"])
def test_linters_are_clean(command):
    done = subprocess.run([str(BIN / command[0]), *command[1:]], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
