"""The metadata a user of each distribution expects (read with tomllib; nothing is built): a
license file that matches ``license``, project URLs, keywords and classifiers, versions and pins
in lockstep; and the dev tools listed once, in the ``dev`` dependency group."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO

DISTRIBUTIONS = [REPO, *sorted(p.parent for p in REPO.glob("plugins/*/pyproject.toml"))]
URLS = {"Homepage", "Repository", "Issues", "Documentation"}


def project(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    return data


@pytest.mark.parametrize("root", DISTRIBUTIONS, ids=lambda p: p.name)
def test_license_urls_and_classifiers(root: Path) -> None:
    meta = project(root)["project"]
    assert meta["license"] == "MIT"
    assert meta["license-files"] == ["LICENSE"]
    text = (root / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n") and "Copyright (c) 2026 The swarmbus authors" in text
    assert text == (REPO / "LICENSE").read_text(encoding="utf-8")
    assert set(meta["urls"]) >= URLS and all(u.startswith("https://github.com/swarmbus/swarmbus") for u in meta["urls"].values())
    assert meta["keywords"]
    classifiers = set(meta["classifiers"])
    assert {"Operating System :: POSIX :: Linux", "Operating System :: MacOS", "Programming Language :: Python :: 3.11"} <= classifiers
    assert any(c.startswith("Development Status :: ") for c in classifiers)
    assert any(c.startswith("Topic :: ") for c in classifiers)
    assert not any(c.startswith("License :: ") for c in classifiers)  # PEP 639: `license` replaces them
    assert meta["requires-python"] == ">=3.11"
    backend = project(root)["build-system"]["requires"]
    assert backend == ["hatchling>=1.27"]  # the first hatchling with PEP 639 license-files


def test_plugins_are_in_lockstep_with_the_core() -> None:
    version = project(REPO)["project"]["version"]
    for root in DISTRIBUTIONS[1:]:
        meta = project(root)["project"]
        assert meta["version"] == version, root
        pins = [d for d in meta["dependencies"] if d.startswith("swarmbus")]
        assert pins and all(p.endswith(f"=={version}") for p in pins), (root, pins)


def test_dev_tools_are_listed_once() -> None:
    dev = project(REPO)["dependency-groups"]["dev"]
    names = {d.split(">")[0].split("=")[0] for d in dev}
    assert {"pytest", "pytest-xdist", "hypothesis", "tox", "ruff", "mypy", "import-linter"} <= names
    bootstrap = (REPO / "scripts" / "bootstrap.sh").read_text(encoding="utf-8")
    assert not [d for d in dev if d in bootstrap], "scripts/bootstrap.sh reads the dev group from pyproject.toml"


def test_the_public_api_is_spelled_out_and_every_name_resolves() -> None:
    """``swarmbus.__all__`` is a literal list (type checkers read it, ``mypy --strict`` users
    need it) and must name exactly the lazily exported names; each of them must import."""
    import ast

    import swarmbus

    source = Path(swarmbus.__file__).read_text()
    literal = next(node.value for node in ast.parse(source).body
                   if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "__all__")
    assert isinstance(literal, ast.List) and all(isinstance(e, ast.Constant) for e in literal.elts)
    assert len(set(swarmbus.__all__)) == len(swarmbus.__all__)
    assert set(swarmbus.__all__) == {"__version__", *swarmbus._EXPORTS}
    for name in swarmbus.__all__:
        assert getattr(swarmbus, name) is not None, name
    names_checked = set(swarmbus.__all__)
    typed = {alias.asname or alias.name for node in ast.walk(ast.parse(source))
             if isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__"
             for alias in node.names}
    assert names_checked - {"__version__"} <= typed, sorted(names_checked - typed)
