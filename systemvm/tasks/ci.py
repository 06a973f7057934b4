"""``invoke ci``: what CI runs (README's test command): lint, build every flavour with exports, all tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from invoke import Context, task

from systemvm import hosttools, naming
from systemvm.defaults import ARTIFACTS_DIR, DEFAULT_VERSION
from systemvm.tasks import user_errors


def _run(args: list[str], env: dict[str, str] | None = None) -> int:
    print("+ " + " ".join(args), flush=True)
    return subprocess.run(args, env=env).returncode


def test_environment(artifacts: Path, version: str) -> dict[str, str]:
    """Point every e2e test at the built artifacts."""
    out = naming.version_dir(artifacts, version).resolve()
    env = dict(os.environ)
    env["SYSTEMVM_ARTIFACTS"] = str(out)
    raws = [str(naming.raw_disk(out.parent, version, f)) for f in naming.FLAVOURS]
    env["SYSTEMVM_RAW_DISKS"] = ":".join(p for p in raws if Path(p).exists())
    # SYSTEMVM_KVM_QCOW2 stays unset: tests/e2e/test_matrix.py boots the x86 flavours through libvirt (as
    # every role) and tests/e2e/test_arm64.py an arm64 router, so tests/e2e/test_kvm_boot.py would only repeat
    # their boots. Set it to run that test too.
    return env


@task(
    help={
        "version": "template version to build and test",
        "artifacts": "output directory",
        "build": "build first (--no-build tests what artifacts/ holds)",
        "pytest_args": "extra arguments for pytest",
    }
)
def ci(
    c: Context,
    version: str = DEFAULT_VERSION,
    artifacts: str = str(ARTIFACTS_DIR),
    build: bool = True,
    pytest_args: str = "",
) -> None:
    """Lint, build every flavour with its exports, then run every test (unit and e2e)."""
    with user_errors():
        if _run(["ruff", "check", "."]) != 0:
            sys.exit(1)
        if _run([sys.executable, "-m", "mypy"]) != 0:  # files and options: [tool.mypy] in pyproject.toml
            sys.exit(1)
        from systemvm.tasks.doctor import report

        print("+ invoke doctor", flush=True)
        if report(list(hosttools.PHASES), naming.flavours("all")) != 0:  # every phase runs below
            sys.exit(1)
        if build:
            from systemvm.tasks.build import build as build_task

            build_task(c, flavour="all", version=version, artifacts=artifacts)
        env = test_environment(Path(artifacts), version)
        args = [sys.executable, "-m", "pytest", "-v", "--durations=25", "tests", *pytest_args.split()]
        sys.exit(_run(args, env))
