"""A full secondary storage, simulated with a small tmpfs: the free-space check refuses before writing, and a
disk that fills up mid-way (the artifact decompresses to more than is free) ends with one line and the mount
exactly as it was, including an older template that -F was asked to replace."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from systemvm.errors import UserError
from systemvm.seed.install import SeedRequest, seed
from tests.unit.test_seed_support import MIB, compress, make_qcow2, publish, snapshot

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
]


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def request(mount: Path, artifact: Path, **kwargs: object) -> SeedRequest:
    return SeedRequest(
        mount=mount, hypervisor="kvm", file=str(artifact), use_db=False, progress=False, **kwargs
    )


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("full")
    small = work / "small"
    small.mkdir()
    big = work / "big"
    big.mkdir()
    # compressible but non-zero content: a few KiB of bz2 that expand to a 12 MiB qcow2 (no holes to skip)
    raw = big / "pattern.raw"
    raw.write_bytes(b"systemvm" * (12 * MIB // 8))
    qcow2 = big / "pattern.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    return {
        "small": publish(compress(make_qcow2(small), "bz2", small / "small-kvm.qcow2.bz2")),
        "incompressible": publish(compress(make_qcow2(small), "none", small / "plain-kvm.qcow2")),
        "expanding": publish(compress(qcow2, "bz2", big / "expanding-kvm.qcow2.bz2")),
    }


def test_free_space_check_refuses_before_writing(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    with tmpfs(tmp_path / "mnt", "512k") as mount:
        (mount / "keep.txt").write_text("other data")
        before = snapshot(mount)
        with pytest.raises(UserError, match="insufficient free space") as caught:
            seed(request(mount, artifacts["incompressible"], template_id=3))
        assert "\n" not in str(caught.value)
        assert snapshot(mount) == before


def test_disk_filling_up_midway_changes_nothing(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    assert artifacts["expanding"].stat().st_size < MIB  # passes the up-front check, then runs out
    with tmpfs(tmp_path / "mnt", "6m") as mount:
        seed(request(mount, artifacts["small"], template_id=3))
        before = snapshot(mount)
        for kwargs in ({"template_id": 4}, {"template_id": 3, "force": True}):
            with pytest.raises(UserError, match="filled up while writing") as caught:
                seed(request(mount, artifacts["expanding"], **kwargs))
            assert "\n" not in str(caught.value)
            assert snapshot(mount) == before
