"""Print the third-party requirements of pyproject.toml (core + chosen extras), one per line.

The Dockerfile installs these in their own layer before copying the source, so editing code does not
re-download LIBERO's assets; the package itself is then installed with ``--no-deps``.

    python docker/pyproject_requirements.py pyproject.toml model,libero,server,dist
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"unknown extra(s) {', '.join(unknown)}; {pyproject} defines: {', '.join(optional)}")
    reqs = list(project.get("dependencies", []))
    for extra in extras:
        reqs += [r for r in optional[extra] if r not in reqs]
    return reqs


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        raise SystemExit("usage: pyproject_requirements.py PYPROJECT EXTRA[,EXTRA...]")
    extras = [e.strip() for e in argv[1].split(",") if e.strip()]
    print("\n".join(requirements(Path(argv[0]), extras)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
