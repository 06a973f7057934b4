"""Bench section ``build``: cold and warm builds, root filesystem and disk sizes."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from systemvm import defaults
from systemvm.bench.table import Rows
from systemvm.build.image import BuildManifest, build_flavours
from systemvm.progress import human_bytes


@contextlib.contextmanager
def cold_cache() -> Iterator[None]:
    """Move the package/bootstrap cache aside so a build starts cold.

    After a successful cold build its fresh cache stays (the warm build that follows uses it) and the old
    one is deleted; after a failure the old cache is put back.
    """
    root = defaults.cache_root()
    aside = root.with_name(root.name + ".bench-aside")
    if root.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(root, aside)
    try:
        yield
    except BaseException:
        if aside.exists():
            shutil.rmtree(root, ignore_errors=True)
            os.replace(aside, root)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def flavour_of(manifest: BuildManifest) -> str:
    return str(manifest["flavour"])


def bench_build(flavours: list[str], version: str, artifacts: Path, cold: bool) -> Rows:
    rows: Rows = []
    if cold:
        with cold_cache():
            start = time.monotonic()
            for manifest in build_flavours(flavours, version, artifacts):
                rows.append((f"{flavour_of(manifest)}: build cold", f"{manifest['build_seconds']:.0f} s"))
            rows.append((f"build cold ({'+'.join(flavours)})", f"{time.monotonic() - start:.0f} s"))
    start = time.monotonic()
    for manifest in build_flavours(flavours, version, artifacts):
        flavour = flavour_of(manifest)
        sizes = manifest["sizes"]
        rows += [
            (f"{flavour}: build warm", f"{manifest['build_seconds']:.0f} s"),
            (f"{flavour}: root filesystem used", human_bytes(sizes["rootfs_used_bytes"])),
            (f"{flavour}: raw disk allocated", human_bytes(sizes["raw_disk_allocated_bytes"])),
        ]
    rows.append((f"build warm ({'+'.join(flavours)})", f"{time.monotonic() - start:.0f} s"))
    return rows
