"""The one release function of ``invoke build`` and ``invoke export``: inputs checked before any work, the
build's SOURCE_DATE_EPOCH carried into every file, a missing build named as such."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from systemvm import naming
from systemvm.errors import UserError
from systemvm.export.release import load_manifests, plan_release, publish_release
from tests.unit.conftest import MIB, make_raw, pattern
from tests.unit.manifests import EPOCH, ORIGINS_NEW, PACKAGES_NEW, make_manifest

VERSION = "4.20.0"
REPO = Path(__file__).resolve().parents[2]


def built(root: Path, flavour: str = "amd64") -> Path:
    """A release directory as a build leaves it: a small raw disk and its manifest."""
    out = naming.version_dir(root, VERSION)
    out.mkdir(parents=True, exist_ok=True)
    make_raw(naming.raw_disk(root, VERSION, flavour), 9 * MIB, [(0, pattern(MIB, 1))])
    manifest = make_manifest(PACKAGES_NEW, ORIGINS_NEW, version=VERSION, flavour=flavour)
    naming.manifest(root, VERSION, flavour).write_text(json.dumps(manifest))
    return out


def test_plan_refuses_a_bad_format_or_previous_directory_before_anything(tmp_path):
    with pytest.raises(UserError, match="unknown export format 'qcow3'"):
        plan_release("qcow3")
    with pytest.raises(UserError, match="previous release directory .* does not exist"):
        plan_release("qcow2", previous=tmp_path / "nowhere")
    assert plan_release(None).formats == []  # --no-export: nothing to export, nothing checked for it
    assert list(tmp_path.iterdir()) == []


def test_the_release_carries_the_builds_epoch_not_the_environments(tmp_path, monkeypatch):
    """The export's time is the one the build recorded; a SOURCE_DATE_EPOCH set later changes nothing."""
    out = built(tmp_path)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH + 86400))
    manifests = load_manifests(out, VERSION, ["amd64"])
    release = publish_release(manifests, out, plan_release("vhd"))
    assert set(release.exports["amd64"]) == {"vhd"}
    sbom = json.loads((out / f"{naming.stem(VERSION, 'amd64')}.cdx.json").read_text())
    stamp = datetime.fromisoformat(sbom["metadata"]["timestamp"])
    assert stamp == datetime.fromtimestamp(EPOCH, tz=UTC)


def test_export_without_a_build_says_build_first(tmp_path):
    with pytest.raises(UserError, match=r"no build of version 4\.20\.0 .* run 'invoke build --version"):
        load_manifests(tmp_path / VERSION, VERSION, ["amd64"])
    out = built(tmp_path, "amd64")
    with pytest.raises(UserError, match="holds no i386 build"):
        load_manifests(out, VERSION, ["amd64", "i386"])


def test_version_is_never_a_path():
    for bad in ("../x", "4.20", "4.20.0/../../etc", ""):
        with pytest.raises(UserError, match="is not X.Y.Z"):
            naming.check_version(bad)
    naming.check_version("4.20.0")
    naming.check_version("4.22.0-rc1")


def test_build_refuses_a_bad_format_before_it_builds(tmp_path):
    """``invoke build --formats qcow3`` ends at once (it used to be refused after the whole build)."""
    artifacts = tmp_path / "artifacts"
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "build", "--flavour", "amd64", "--formats", "qcow3",
         "--artifacts", str(artifacts)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: unknown export format 'qcow3': use one or more of qcow2,vhd,ova,hyperv"
    ]
    assert not artifacts.exists()
