"""The deployment files' layout: every path the READMEs of k8s/ and docker/ name exists; each
image installs its dependencies before it copies the code; one .dockerignore filters every
build context."""

from __future__ import annotations

import importlib.metadata
import re
import runpy
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[3]
DOCKER = ROOT / "docker"
READMES = (ROOT / "k8s" / "README.md", ROOT / "docker" / "README.md")
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
FILE_SUFFIX = re.compile(r"\.(ya?ml|py|md|sh|Dockerfile|lock|toml|json)$")
PATHLIKE = re.compile(r"^[\w.-]+(/[\w.-]*)*$")


# ---- the READMEs name files that exist ------------------------------------------------------

def _repo_files() -> set[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(out.split())


def missing_paths(readme: Path, text: str, repo_files: set[str]) -> list[str]:
    """The paths ``text`` names (in backquotes, or as relative links) that do not exist.

    A path is taken relative to the README's folder or to the repository root: a backquoted
    word with a ``/`` whose first part is a file or folder of either place, or a bare file name
    (``x.yaml``), which must be some file of the repository. Labels, image names and URLs
    (``kmeans.io/spot``, ``kmeans-platform/serving``) start with no such part and are left out.
    """
    bases = (readme.parent, ROOT)
    names = {Path(f).name for f in repo_files}
    missing = []
    for word in sorted(set(re.findall(r"`([^`\n]+)`", text))):
        if not PATHLIKE.match(word):
            continue
        if "/" in word:
            first = word.split("/", 1)[0]
            if any((base / first).exists() for base in bases) and not any(
                    (base / word).exists() for base in bases):
                missing.append(word)
        elif FILE_SUFFIX.search(word) and word not in names:
            missing.append(word)
    for link in re.findall(r"\]\(([^)#\s]+)", text):
        if "://" not in link and not (readme.parent / link).exists():
            missing.append(link)
    return missing


@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_a_deployment_readme_names_exists(readme):
    assert missing_paths(readme, readme.read_text(), _repo_files()) == []


def test_the_path_check_finds_a_file_that_is_not_there():
    readme = ROOT / "k8s" / "README.md"
    # the listing this README once had: a file at k8s/ that lives in k8s/base/
    text = ("| `k8s/inferenceservice.yaml` | `base/nope.yaml` | `podmonitr.yaml` |"
            " `kmeans.io/spot` `kmeans-platform/serving` [x](../nowhere.md#a)")
    assert missing_paths(readme, text, _repo_files()) == [
        "base/nope.yaml", "k8s/inferenceservice.yaml", "podmonitr.yaml", "../nowhere.md"]


# ---- dependencies in a layer before the code ------------------------------------------------

def _instructions(dockerfile: Path) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments and heredocs out."""
    out, current, heredoc = [], "", None
    for line in dockerfile.read_text().splitlines():
        if heredoc:
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            if m := re.search(r"<<-?'?(\w+)'?", current):
                heredoc = m.group(1)
            out.append(current.strip())
            current = ""
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_each_image_installs_its_dependencies_before_it_copies_the_code(dockerfile):
    steps = _instructions(dockerfile)
    deps = [i for i, s in enumerate(steps) if "project_deps.py" in s and s.startswith("RUN")]
    assert len(deps) == 1, f"{dockerfile.name}: one RUN installs the dependencies: {deps}"
    run = steps[deps[0]]
    assert "-c " in run and "requirements.lock" in run and "-r " in run, run
    # The stage of that step: from its FROM to the next one.
    start = max(i for i in range(deps[0]) if steps[i].startswith("FROM "))
    end = next((i for i in range(deps[0], len(steps)) if steps[i].startswith("FROM ")),
               len(steps))
    stage = steps[start:end]
    at = deps[0] - start
    # Only the declarations reach the dependency layer: no code copied or mounted before it.
    code = re.compile(r"^COPY (--\S+ )*\. |--mount=type=bind,from=")
    assert not [s for s in stage[:at] if code.search(s)], stage[:at]
    assert not [s for s in stage[:at] if s.startswith("COPY")
                and not re.fullmatch(r"COPY (pyproject\.toml |requirements\.lock |"
                                     r"docker/project_deps\.py )+\./", s)], stage[:at]
    # Then the code, installed without dependencies: all of them came from the layer above.
    installs = [s for s in stage[at + 1:] if re.search(r"\bpip install\b", s)]
    assert len(installs) == 1 and "--no-deps" in installs[0], installs


def _declared(extras: set[str]) -> set[str]:
    """What the installed project's metadata requires with ``extras`` (its self-references
    followed), as normalised requirement strings."""
    out, todo, seen = set(), set(extras), set()
    while todo:
        extra = todo.pop()
        seen.add(extra)
        for raw in importlib.metadata.requires("kmeans-platform") or ():
            req = Requirement(raw)
            if req.marker is not None and not req.marker.evaluate({"extra": extra}):
                continue
            if req.name == "kmeans-platform":
                todo |= set(req.extras) - seen
            else:
                req.marker = None
                out.add(str(req))
    return out


@pytest.mark.parametrize("extra", ["serving", "platform"])
def test_the_dependency_layer_installs_what_the_package_declares(extra):
    """docker/project_deps.py reads pyproject.toml as pip would: the same requirements as the
    installed package's metadata (`make install` re-installs when pyproject.toml changes)."""
    project_deps = runpy.run_path(str(DOCKER / "project_deps.py"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = {str(Requirement(r)) for r in project_deps["requirements"](pyproject, [extra])}
    assert listed == _declared({extra})
    out = subprocess.run([sys.executable, str(DOCKER / "project_deps.py"), "--pyproject",
                          str(ROOT / "pyproject.toml"), extra], capture_output=True, text=True,
                         check=True).stdout
    assert {str(Requirement(r)) for r in out.split("\n") if r} == listed


def test_project_deps_names_an_unknown_extra():
    proc = subprocess.run([sys.executable, str(DOCKER / "project_deps.py"), "--pyproject",
                           str(ROOT / "pyproject.toml"), "servng"], capture_output=True, text=True)
    assert proc.returncode == 1 and "no extra 'servng'" in proc.stderr, proc.stderr


# ---- one .dockerignore ----------------------------------------------------------------------

def test_one_dockerignore_at_the_root_filters_every_build():
    """BuildKit prefers <Dockerfile>.dockerignore to the root one: a copy next to a Dockerfile
    would silently replace the root's rules for that image."""
    assert not list(DOCKER.glob("*.dockerignore"))
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    # local state, the virtualenv, VCS, and anything secret-looking stay out of every image
    assert {".git", ".venv", ".kmeans", "mlruns", ".env", ".env.*", "**/*.pem", "**/*.key",
            "**/kubeconfig*"} <= patterns
