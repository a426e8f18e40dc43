"""Print the requirements an image installs before its code: the project's own dependencies and
those of the extras named, one a line, as ``pyproject.toml`` declares them.

The Dockerfiles install these (with ``-c requirements.lock``) in a layer that only
``pyproject.toml``, ``requirements.lock`` and this file feed, so a change of the code reuses the
cached dependencies; the package itself is installed afterwards with ``--no-deps``. An extra
that names the project itself (``kmeans-platform[serving]``) is followed.

Usage: ``python docker/project_deps.py [--pyproject PATH] EXTRA...``
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    """The core dependencies, then those of each extra (and of the extras it names), in order.

    Parameters
    ----------
    pyproject : dict
        ``pyproject.toml`` as parsed by :mod:`tomllib`.
    extras : list of str
        Names under ``[project.optional-dependencies]``.

    Returns
    -------
    list of str
        Requirement strings, each once, without the project's references to itself.

    Examples
    --------
    >>> requirements({"project": {"name": "p", "dependencies": ["a==1"],
    ...               "optional-dependencies": {"x": ["p[y]", "b==2"], "y": ["c==3"]}}}, ["x"])
    ['a==1', 'c==3', 'b==2']
    """
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    itself = re.compile(rf"{re.escape(project['name'])}\s*\[([^\]]+)\]\s*")
    out: list[str] = list(project.get("dependencies", []))
    seen: set[str] = set()

    def add(extra: str) -> None:
        if extra in seen:
            return
        if extra not in optional:
            raise SystemExit(f"no extra {extra!r} in pyproject.toml (it has {sorted(optional)})")
        seen.add(extra)
        for req in optional[extra]:
            if m := itself.fullmatch(req):
                for name in m.group(1).split(","):
                    add(name.strip())
            else:
                out.append(req)

    for extra in extras:
        add(extra)
    return list(dict.fromkeys(out))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    p.add_argument("extras", nargs="*")
    args = p.parse_args(argv)
    with args.pyproject.open("rb") as f:
        print("\n".join(requirements(tomllib.load(f), args.extras)))


if __name__ == "__main__":
    main()
