"""The systemvm-scripts-signature element on the CI build's image, without a build of its own: its
finalise.d step run again in a chroot of the amd64 image (``SYSTEMVM_ARTIFACTS``, read-only under an overlay)
with each CloudStack line's digest.

It must give back, byte for byte, the tarball the build left (the same files, the manifest's time stamp:
the packing is deterministic), sign it with the line's digest alone (32 or 128 hex digits, one line), pack
nothing but /opt/cloud/bin and /opt/cloud/lib (no byte-code caches, owner root, the one time stamp), follow a
changed script, and leave a baked CloudStack tarball as it is. Needs root; skips only when
``SYSTEMVM_ARTIFACTS`` is unset.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from systemvm import contract, profile
from tests.e2e import artifacts
from tests.e2e.image_overlay import amd64_image, overlay

pytestmark = [pytest.mark.e2e, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]
STEP = REPO / "elements/systemvm-scripts-signature/finalise.d/93-sign-cloud-scripts"
TGZ = contract.SCRIPTS_COPY_PATH.lstrip("/")
SIG = contract.SCRIPTS_SIGNATURE_PATH.lstrip("/")


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with amd64_image(tmp_path_factory) as lower:
        yield lower


def manifest() -> dict:
    found = artifacts.manifest("amd64")
    assert found is not None, "the amd64 manifest is missing"
    return found


def sign(root: Path, line: str, epoch: int | None = None) -> str:
    shutil.copy(STEP, root / "tmp/sign")
    env = {
        **os.environ,
        **profile.LINES[line].build_environment(),
        "SOURCE_DATE_EPOCH": str(epoch if epoch is not None else manifest()["source_date_epoch"]),
    }
    done = subprocess.run(["chroot", str(root), "/tmp/sign"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_packing_again_gives_the_builds_tarball_byte_for_byte(image_root: Path, tmp_path: Path) -> None:
    built = manifest()
    line = profile.manifest_profile(built).line
    kept = (image_root / TGZ).read_bytes()
    with overlay(image_root, tmp_path) as root:
        (root / "usr/share/cloud/cloudstack-scripts.json").unlink(missing_ok=True)  # the image's own scripts
        sign(root, line)
        assert (root / TGZ).read_bytes() == kept, "the packing is not deterministic"
        assert (root / SIG).read_text() == (image_root / SIG).read_text()
    assert built["scripts_signature"]["digest"] == profile.LINES[line].digest(kept)


@pytest.mark.parametrize("line", profile.SUPPORTED)
def test_the_signature_is_the_lines_digest_of_the_images_own_scripts(
    image_root: Path, tmp_path: Path, line: str
) -> None:
    p = profile.LINES[line]
    with overlay(image_root, tmp_path) as root:
        out = sign(root, line, epoch=1_000_000_000)
        signature = (root / SIG).read_text()
        assert signature == p.digest((root / TGZ).read_bytes()) + "\n"
        assert len(signature.strip()) == p.scripts_digest_length
        assert f"{p.scripts_digest} of the image's" in out
        with tarfile.open(root / TGZ) as tar:
            members = tar.getmembers()
        names = {m.name for m in members}
        assert "opt/cloud/bin/get_template_version.sh" in names
        assert "opt/cloud/lib/systemvm/guest/userdata.py" in names and "opt/cloud/lib/VERSION" in names
        assert all(m.name.startswith(("opt/cloud/bin", "opt/cloud/lib")) for m in members)
        assert not any("__pycache__" in m.name for m in members)
        assert {(m.uid, m.gid, int(m.mtime)) for m in members} == {(0, 0, 1_000_000_000)}
        # a changed script changes the signature
        before = signature
        with open(root / "opt/cloud/bin/patched.sh", "a") as script:
            script.write("# changed\n")
        sign(root, line, epoch=1_000_000_000)
        assert (root / SIG).read_text() != before


def test_a_baked_cloudstack_tarball_is_signed_as_it_is(image_root: Path, tmp_path: Path) -> None:
    with overlay(image_root, tmp_path) as root:
        cloudstack = b"\x1f\x8b\x08\x00CloudStack's own tarball"
        (root / TGZ).write_bytes(cloudstack)
        (root / "usr/share/cloud/cloudstack-scripts.json").write_text("{}\n")
        out = sign(root, "4.20")
        assert (root / TGZ).read_bytes() == cloudstack
        assert (root / SIG).read_text() == hashlib.md5(cloudstack).hexdigest() + "\n"
        assert "CloudStack's cloud-scripts.tgz" in out
