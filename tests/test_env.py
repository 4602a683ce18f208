"""Every MTSAE_* environment variable is listed and read in mtsae/env.py, and listed in docs/install.md."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from mtsae import env

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("mtsae", "harvest", "train", "evaluate", "cache") for p in sorted((ROOT / d).rglob("*.py"))]


def _environment_reads(tree: ast.AST) -> list[ast.expr]:
    """The key of every ``os.environ.get(k)``, ``os.getenv(k)``, ``os.environ[k]`` and ``k in os.environ``."""
    def is_environ(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ"

    keys = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.func, ast.Attribute) and (
                node.func.attr == "getenv" or node.func.attr in ("get", "pop", "setdefault") and is_environ(node.func.value)):
            keys.append(node.args[0])
        elif isinstance(node, ast.Subscript) and is_environ(node.value):
            keys.append(node.slice)
        elif isinstance(node, ast.Compare) and any(is_environ(c) for c in node.comparators):
            keys.append(node.left)
    return keys


def test_only_env_module_reads_mtsae_variables():
    offenders = []
    for path in SOURCES:
        if path == ROOT / "mtsae" / "env.py":
            continue
        for key in _environment_reads(ast.parse(path.read_text())):
            text = ast.unparse(key)
            if "MTSAE_" in text or text.endswith("_ENV"):
                offenders.append(f"{path.relative_to(ROOT)}:{key.lineno}: {text}")
    assert not offenders, offenders


def test_every_mtsae_variable_named_in_the_code_is_listed():
    named = {name for path in SOURCES for name in re.findall(r"\bMTSAE_[A-Z_]+\b", path.read_text())}
    assert named <= {v.name for v in env.VARIABLES}, named - {v.name for v in env.VARIABLES}
    assert len({v.name for v in env.VARIABLES}) == len(env.VARIABLES)


def test_install_doc_lists_each_variable_with_its_doc():
    text = (ROOT / "docs" / "install.md").read_text()
    for v in env.VARIABLES:
        assert f"| `{v.name}` | {v.doc} |" in text, v.name
    table = set(re.findall(r"^\| `(MTSAE_[A-Z_]+)` \|", text, flags=re.M))
    assert table == {v.name for v in env.VARIABLES}


def test_the_check_sees_a_module_that_reads_a_variable_itself():
    tree = ast.parse('import os\nA = os.environ.get("MTSAE_X", "1")\nB = os.getenv(HOME_ENV)\nC = os.environ["MTSAE_Y"]')
    assert [ast.unparse(k) for k in _environment_reads(tree)] == ["'MTSAE_X'", "HOME_ENV", "'MTSAE_Y'"]


@pytest.mark.parametrize("variable", env.VARIABLES, ids=lambda v: v.name)
def test_get_is_the_value_as_set_else_the_default(variable, monkeypatch):
    monkeypatch.delenv(variable.name, raising=False)
    assert env.get(variable) == variable.default
    monkeypatch.setenv(variable.name, "")
    assert env.get(variable) == ""  # each reader says what an empty value means, as before
    monkeypatch.setenv(variable.name, "x")
    assert env.get(variable) == "x"
