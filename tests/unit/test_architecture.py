"""Imports sit at module top, except the lazily imported heavy libraries. (The layers, style and
types are ``make lint``: import-linter, ruff and mypy, which ``make test`` runs first.)"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from pipeline import LAZY_IMPORTS

ROOT = Path(__file__).resolve().parents[2]
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
