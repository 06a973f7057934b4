"""diskimage-builder's own linter over our elements: a README.rst each, bash scripts with ``set -eu`` and
``set -o pipefail`` on its own line and DIB_DEBUG_TRACE, 4-space indents, sorted element-deps, flake8 on
the Python programs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not shutil.which("dib-lint"), reason="dib-lint comes with diskimage-builder")
def test_dib_lint_passes_on_our_elements(tmp_path):
    # LIB_DIR: dib-lint also checks diskimage-builder's own lib/ for tabs; we have none, so an empty one
    env = {**os.environ, "ELEMENTS_DIR": "elements", "LIB_DIR": str(tmp_path)}
    out = subprocess.run(["dib-lint"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    errors = [line for line in out.stdout.splitlines() if not line.startswith(("Checking", "Parsing"))]
    assert out.returncode == 0, "\n".join(errors) + out.stderr
