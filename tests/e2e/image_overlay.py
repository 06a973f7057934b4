"""A built image's root filesystem, mounted read-only, and copy-on-write views of it for e2e tests that run
an element's step or a guest module inside a chroot of the image (no build of their own)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.e2e import artifacts


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
def overlay(lower: Path, work: Path, system: bool = False) -> Iterator[Path]:
    """A writable view of ``lower`` whose changes go to ``work``; with ``system``, /proc, /sys and /dev
    mounted inside for programs that read them. Everything is unmounted afterwards."""
    upper, workdir, merged = work / "upper", work / "work", work / "merged"
    for directory in (upper, workdir, merged):
        directory.mkdir()
    _run("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={workdir}",
         str(merged))  # fmt: skip
    mounted = [merged]
    try:
        if system:
            for kind, where in (("proc", "proc"), ("sysfs", "sys")):
                _run("mount", "-t", kind, kind, str(merged / where))
                mounted.append(merged / where)
            _run("mount", "--bind", "/dev", str(merged / "dev"))
            mounted.append(merged / "dev")
        yield merged
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", "-l", str(path)], check=False)
