"""docs/install.md's GPU-box command keeps an installed torch (pip's own resolver, --dry-run --report).

A scratch venv gets the torch release this suite runs on (here the CPU build of the previous minor
release, standing in for a CUDA build), then pip resolves the documented command without installing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import venv
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- install-keeping-torch:"


def documented_command() -> str:
    """The bash line after the marker in docs/install.md."""
    text = (ROOT / "docs" / "install.md").read_text()
    block = text[text.index(MARKER):]
    return re.search(r"```bash\n(.+?)\n```", block, re.S).group(1).strip()


def run(args: list[str] | str, env: dict[str, str], timeout: int, shell: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, shell=shell,
                          executable="/bin/bash" if shell else None)


@pytest.mark.slow
def test_documented_gpu_install_keeps_the_installed_torch(tmp_path):
    venv.create(tmp_path / "venv", with_pip=True)
    bin_dir = tmp_path / "venv" / "bin"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    index = run([str(bin_dir / "pip"), "index", "versions", "sae-bench"], env, timeout=120)
    if index.returncode != 0:
        pytest.skip(f"pip cannot reach a package index here ({index.stderr.strip().splitlines()[-1:]}); "
                    "this check needs one")
    torch_version = version("torch")
    installed = run([str(bin_dir / "pip"), "install", "--quiet", "--no-deps", f"torch=={torch_version}"], env, timeout=900)
    assert installed.returncode == 0, installed.stderr[-2000:]

    report = tmp_path / "report.json"
    command = documented_command()
    assert command.startswith("pip install -e \".[eval]\"")
    resolved = run(f"{command} --dry-run --quiet --report {report}", env, timeout=1500, shell=True)
    assert resolved.returncode == 0, resolved.stderr[-3000:]
    to_install = {item["metadata"]["name"].lower(): item["metadata"]["version"]
                  for item in json.loads(report.read_text())["install"]}
    assert "sae-bench" in to_install and "mtsae" in to_install  # it did resolve the eval extra
    assert "torch" not in to_install, f"pip would replace torch {torch_version} with {to_install['torch']}"
    assert not [name for name in to_install if name.startswith("nvidia-cu")], to_install
    if "torchvision" in to_install:  # the torchvision chosen is the one for the installed torch
        torchvision = next(item for item in json.loads(report.read_text())["install"]
                           if item["metadata"]["name"].lower() == "torchvision")
        wanted = [r for r in torchvision["metadata"].get("requires_dist", []) if r.startswith("torch")]
        assert any(torch_version.split("+")[0] in r for r in wanted), wanted
    print(f"{sys.executable}: keeps torch {torch_version}; would install {len(to_install)} packages")
