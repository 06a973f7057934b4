"""A built image's root filesystem, mounted read-only, and copy-on-write views of it for e2e tests that run
an element's step or a guest module inside a chroot of the image (no build of their own)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.e2e import artifacts

AMD64_RAW = artifacts.raw_disks().get("amd64")  # CI's amd64 image (SYSTEMVM_ARTIFACTS)
SYSTEM = ("proc", "sys", "dev")  # what programs that read the system find mounted in an overlay


def _run(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


@contextlib.contextmanager
def mounted_image(raw: Path, lower: Path) -> Iterator[Path]:
    """The raw disk's root partition on ``lower``, read-only (a loop device with an offset: no
    device-mapper needed); unmounted afterwards."""
    _run("mount", "-o", f"loop,offset={artifacts.root_partition_offset(raw)},ro,noload", str(raw), str(lower))
    try:
        yield lower
    finally:
        subprocess.run(["umount", str(lower)], check=False)


@contextlib.contextmanager
def amd64_image(factory: pytest.TempPathFactory) -> Iterator[Path]:
    """CI's amd64 image mounted read-only for a module's tests: skips where SYSTEMVM_ARTIFACTS holds none,
    fails without root (loop mount, overlay and chroot)."""
    if AMD64_RAW is None:
        pytest.skip("SYSTEMVM_ARTIFACTS is not set (or holds no amd64 raw disk)")
    if os.geteuid() != 0:
        pytest.fail("needs root: loop mount, overlay and chroot")
    with mounted_image(AMD64_RAW, factory.mktemp("lower")) as lower:
        yield lower


@contextlib.contextmanager
def overlay(lower: Path, work: Path, mounts: Sequence[str] = ()) -> Iterator[Path]:
    """A writable view of ``lower`` whose changes go to ``work``, with ``mounts`` (of :data:`SYSTEM`: /proc,
    /sys, /dev) mounted inside for programs that read them. Everything is unmounted afterwards."""
    upper, workdir, merged = work / "upper", work / "work", work / "merged"
    for directory in (upper, workdir, merged):
        directory.mkdir()
    _run("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={workdir}",
         str(merged))  # fmt: skip
    mounted = [merged]
    try:
        for kind in mounts:
            if kind == "dev":
                _run("mount", "--bind", "/dev", str(merged / "dev"))
            else:
                _run("mount", "-t", {"sys": "sysfs"}.get(kind, kind), kind, str(merged / kind))
            mounted.append(merged / kind)
        yield merged
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", "-l", str(path)], check=False)
