"""Imports sit at module top, except the lazily imported heavy libraries; the package docstring
names every part of the package; the import contracts catch what they are for. (The layers,
style, types and declared dependencies are ``make lint``: ruff, import-linter, mypy and deptry,
which ``make test`` runs first.)"""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pipeline
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


def _parts() -> set[str]:
    """Every subpackage and top-level module of pipeline/ (the layers' names)."""
    here = ROOT / "pipeline"
    packages = {p.parent.name for p in here.glob("*/__init__.py")}
    modules = {p.stem for p in here.glob("*.py") if p.name != "__init__.py"}
    return packages | modules


def test_the_package_docstring_names_every_part_of_the_package():
    named = set(re.findall(r"``([a-z_]+)``", pipeline.__doc__ or ""))
    missing = sorted(_parts() - named)
    assert not missing, f"pipeline/__init__.py's docstring leaves out {missing}"


# Each planted import breaks the contracts named beside it, and only those: import-linter run on
# a copy of the package with the imports added.
_PLANTED = {
    # serving sits above monitoring in the layers: only the serving contract stops this
    "serving/_planted.py": ("from pipeline.monitoring import window\n",
                           {"Serving stands alone: core, model, registry and data.features only"}),
    # a product layer reaching up into the dev tooling
    "orchestration/_planted.py": ("from pipeline.devtools import stack\n",
                                  {"Layers: each imports only from the layers below it",
                                   "The product does not import dev tooling or sample data"}),
    # ingest reading the lake's name from the sample-data generator again
    "data/_planted.py": ("from pipeline.data import datagen\n",
                         {"The product does not import dev tooling or sample data"}),
    # a package that no layer names
    "extra/__init__.py": ("", {"Layers: each imports only from the layers below it"}),
}


def test_the_import_contracts_break_on_the_imports_they_forbid(tmp_path):
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)

    def broken() -> set[str]:
        out = subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120,
                             env={"PATH": str(BIN), "PYTHONPATH": str(tmp_path)}).stdout
        return set(re.findall(r"^(.+) BROKEN$", out, flags=re.M))

    assert broken() == set(), "the contracts do not hold on an unchanged copy"
    for path, (source, contracts) in _PLANTED.items():
        planted = tmp_path / "pipeline" / path
        planted.parent.mkdir(exist_ok=True)
        planted.write_text(source)
        assert broken() == contracts, f"planted {path}: {source.strip() or 'a new package'}"
        shutil.rmtree(planted.parent) if path.endswith("__init__.py") else planted.unlink()


def test_every_module_run_by_name_exists():
    """``python -m pipeline...`` in the Makefile, the deployment files and the package's own
    messages and docstrings names a module that is there (modules move between layers)."""
    texts = [ROOT / "Makefile", *(ROOT / "docker").iterdir(), *(ROOT / "k8s").rglob("*.*"),
             *(ROOT / "pipeline").rglob("*.py")]
    named = {m for path in texts if path.is_file()
             for m in re.findall(r"-m (pipeline(?:\.\w+)*)", path.read_text())}
    assert "pipeline.devtools.stack" in named  # the check sees them
    missing = sorted(m for m in named if importlib.util.find_spec(m) is None)
    assert not missing, f"run by name but not a module: {missing}"
