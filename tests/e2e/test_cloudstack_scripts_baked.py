"""``invoke build --cloudstack-scripts``: a tarball made here ends up in the raw image as CloudStack bakes it.

Builds amd64 (no exports) into a temporary artifacts directory with a cloud-scripts.tgz holding
``opt/cloud/bin/keystore-setup`` (mode 0644 in the tarball: the bake makes it executable, as CloudStack's
build does) and a marker file with a random token, then mounts the raw disk's root partition read-only
(``mount -o loop,offset=...``; no device-mapper needed) and checks the tree, the byte-identical copy in
/usr/share/cloud/ and the MD5 signature, and the manifest's record. Needs root (the build and the mount).
Run builds one at a time on a shared host: ``flock /tmp/systemvm-build.lock python -m pytest ...``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from systemvm import naming
from systemvm.defaults import DEFAULT_VERSION
from tests.e2e.artifacts import root_partition_offset

pytestmark = [pytest.mark.e2e, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]
FLAVOUR = "amd64"
TOKEN = secrets.token_hex(8)
KEYSTORE = b"#!/bin/bash\n# stand-in for CloudStack's keystore-setup\necho keystore-setup\n"
MARKER = "opt/cloud/templates/cloudstack-scripts-marker"


def _tarball(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data, mode in (
            ("opt/cloud/bin/keystore-setup", KEYSTORE, 0o644),
            (MARKER, f"baked {TOKEN}\n".encode(), 0o644),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), mode, 1234, 1234
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, dict]]:
    """(tarball, mounted root, manifest) of one amd64 build with the tarball baked in."""
    if os.geteuid() != 0:
        pytest.fail("needs root: diskimage-builder and the loop mount")
    work = tmp_path_factory.mktemp("cloudstack-scripts")
    tgz = _tarball(work / "cloud-scripts.tgz")
    artifacts = work / "artifacts"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "build", "--flavour", FLAVOUR, "--version", DEFAULT_VERSION,
         "--no-export", "--artifacts", str(artifacts), "--cloudstack-scripts", str(tgz)],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    print(f"build with --cloudstack-scripts: {time.monotonic() - started:.0f} s")
    log = naming.version_dir(artifacts, DEFAULT_VERSION) / "logs" / f"build-{FLAVOUR}.log"
    if done.returncode != 0:  # the log goes with the temporary directory: show its end here
        tail = log.read_text(errors="replace").splitlines()[-60:] if log.exists() else []
        pytest.fail(done.stderr[-2000:] + "\n--- end of the build log ---\n" + "\n".join(tail))
    raw = naming.raw_disk(artifacts, DEFAULT_VERSION, FLAVOUR)
    manifest = json.loads(naming.manifest(artifacts, DEFAULT_VERSION, FLAVOUR).read_text())
    root = work / "root"
    root.mkdir()
    subprocess.run(
        ["mount", "-o", f"loop,offset={root_partition_offset(raw)},ro,noload", str(raw), str(root)],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield tgz, root, manifest
    finally:
        subprocess.run(["umount", str(root)], check=False)


def test_the_tree_is_unpacked_over_root(built: tuple[Path, Path, dict]) -> None:
    _, root, _ = built
    keystore = root / "opt/cloud/bin/keystore-setup"
    assert keystore.read_bytes() == KEYSTORE
    st = keystore.stat()
    assert st.st_mode & 0o111, "CloudStack's build makes /opt/cloud/bin/* executable"
    assert (st.st_uid, st.st_gid) == (0, 0), "baked files belong to root, not to the tarball's owner"
    assert (root / MARKER).read_text() == f"baked {TOKEN}\n"


def test_the_tarball_and_its_md5_are_where_the_handshake_looks(built: tuple[Path, Path, dict]) -> None:
    tgz, root, _ = built
    assert (root / "usr/share/cloud/cloud-scripts.tgz").read_bytes() == tgz.read_bytes()
    md5 = hashlib.md5(tgz.read_bytes()).hexdigest()
    assert (root / "var/cache/cloud/cloud-scripts-signature").read_text() == md5 + "\n"


def test_the_manifest_records_what_was_baked(built: tuple[Path, Path, dict]) -> None:
    tgz, root, manifest = built
    record = manifest["cloudstack_scripts"]
    assert record["source"] == "cloud-scripts.tgz" and record["kind"] == "tarball"
    assert record["cloud_scripts_md5"] == hashlib.md5(tgz.read_bytes()).hexdigest()
    assert record["cloud_scripts_files"] == 2
    assert "/opt/cloud/bin/keystore-setup" not in record["replaced_image_files"]
    assert "systemvm-cloudstack-scripts" in manifest["elements"]
    baked = json.loads((root / "usr/share/cloud/cloudstack-scripts.json").read_text())
    assert baked["cloud_scripts_md5"] == record["cloud_scripts_md5"]


def test_the_image_directories_kept_their_modes(built: tuple[Path, Path, dict]) -> None:
    _, root, _ = built
    assert oct(root.stat().st_mode & 0o7777) == oct(0o755)
    assert (root / "bin").is_symlink() and (root / "lib").is_symlink(), "merged /usr links survive"
