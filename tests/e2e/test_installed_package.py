"""``pip install .`` into a fresh virtual environment, then the package's programs from a directory outside
the repository: ``systemvm vhd check``, the suite's module entry (with the package lists it reads, shipped
as package data) and the invoke tasks as ``systemvm-tasks`` / ``python -m systemvm.tasks``.

The install builds a wheel and fetches every dependency through pip's usual index (its cache makes later
runs faster): about 65 s on the CI machine, hence e2e.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from systemvm.export.formats.vhd import write_dynamic_vhd

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    out = subprocess.run(
        [str(where / "bin/pip"), "install", "-q", "--disable-pip-version-check", str(REPO)],
        capture_output=True, text=True, timeout=900, cwd=where,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return where


def run(venv: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """A program of the environment, run in ``cwd`` (outside the repository), nothing of it on the path."""
    env = {"PATH": f"{venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(cwd)}
    return subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def outside(tmp_path) -> Path:
    assert REPO not in tmp_path.resolve().parents
    return tmp_path


def test_the_package_is_imported_from_the_environment(venv, outside):
    out = run(venv, outside, str(venv / "bin/python"), "-c", "import systemvm; print(systemvm.__file__)")
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_relative_to(venv)


def test_vhd_check_runs_outside_the_repository(venv, outside):
    raw = outside / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(8 * 1024 * 1024)
        f.seek(3 * 1024 * 1024)
        f.write(b"data" * 1024)
    write_dynamic_vhd(raw, outside / "disk.vhd", timestamp=0)
    good = run(venv, outside, "systemvm", "vhd", "check", "disk.vhd")
    assert good.returncode == 0, good.stderr
    broken = outside / "broken.vhd"
    data = bytearray((outside / "disk.vhd").read_bytes())
    data[-512 + 64] ^= 0xFF  # the footer's checksum no longer matches
    broken.write_bytes(bytes(data))
    bad = run(venv, outside, "systemvm", "vhd", "check", "broken.vhd")
    assert bad.returncode != 0 and "broken.vhd" in bad.stdout + bad.stderr


def test_the_suite_and_the_package_lists_it_reads_are_installed(venv, outside):
    python = str(venv / "bin/python")
    assert run(venv, outside, python, "-m", "systemvm.check.suite", "--help").returncode == 0
    code = (
        "import json; from systemvm.check.suite import PACKAGES_DIR, SUITE_DIR\n"
        "from systemvm.check.appliance.target import read_package_list\n"
        "print(json.dumps([str(PACKAGES_DIR), str(SUITE_DIR), read_package_list(PACKAGES_DIR, 'amd64')]))"
    )
    out = run(venv, outside, python, "-c", code)
    assert out.returncode == 0, out.stderr
    packages_dir, suite_dir, names = json.loads(out.stdout)
    assert Path(packages_dir).is_relative_to(venv) and Path(suite_dir).is_relative_to(venv)
    assert (Path(suite_dir) / "conftest.py").is_file()
    assert "openssh-server" in names


def test_the_invoke_tasks_run_outside_the_repository(venv, outside):
    listed = run(venv, outside, "systemvm-tasks", "--list")
    assert listed.returncode == 0, listed.stderr
    for name in ("build", "export", "boot", "test", "matrix", "doctor"):
        assert f"\n  {name} " in listed.stdout
    help_ = run(venv, outside, str(venv / "bin/python"), "-m", "systemvm.tasks", "test", "--help")
    assert help_.returncode == 0, help_.stderr
    assert "--hypervisor" in help_.stdout and "--role" in help_.stdout
    # outside the repository there is no tasks.py: plain invoke finds nothing, the package's program does
    assert run(venv, outside, "invoke", "--list").returncode != 0
