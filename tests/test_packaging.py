"""pyproject.toml says what the code needs, in the form current setuptools expects."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _imports_tomllib() -> list[Path]:
    sources = [p for d in ("mtsae", "harvest", "train", "evaluate", "cache") for p in (ROOT / d).rglob("*.py")]
    return [p for p in sources if any(isinstance(n, ast.Import) and any(a.name == "tomllib" for a in n.names)
                                      for n in ast.walk(ast.parse(p.read_text())))]


def test_requires_python_excludes_versions_without_tomllib():
    requires = SpecifierSet(PROJECT["project"]["requires-python"])
    assert _imports_tomllib(), "no module imports tomllib any more: requires-python may be relaxed"
    assert "3.10" not in requires and "3.11" in requires  # tomllib is new in 3.11
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in requires


def test_license_is_an_spdx_expression_with_a_setuptools_that_reads_it():
    project, build = PROJECT["project"], PROJECT["build-system"]
    assert isinstance(project["license"], str) and re.fullmatch(r"[A-Za-z0-9.\-+ ]+", project["license"])
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))  # PEP 639 forbids both
    setuptools = next(r for r in build["requires"] if r.startswith("setuptools"))
    assert "76.9" not in SpecifierSet(setuptools.removeprefix("setuptools"))  # 77 reads SPDX strings
