"""Where the e2e tests find the build's artifacts: ``SYSTEMVM_ARTIFACTS`` = artifacts/<version> dir."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from systemvm import naming


def version_dir() -> Path | None:
    value = os.environ.get("SYSTEMVM_ARTIFACTS")
    return Path(value) if value else None


def version() -> str | None:
    d = version_dir()
    return d.name if d else None


def raw_disks() -> dict[str, Path]:
    d = version_dir()
    if d is None:
        return {}
    found = {f: naming.raw_disk(d.parent, d.name, f) for f in naming.FLAVOURS}
    return {f: p for f, p in found.items() if p.exists()}


def manifest(flavour: str) -> dict | None:
    d = version_dir()
    if d is None:
        return None
    path = naming.manifest(d.parent, d.name, flavour)
    return json.loads(path.read_text()) if path.exists() else None


def export(flavour: str, fmt: str) -> Path | None:
    d = version_dir()
    if d is None:
        return None
    path = d / naming.export_name(d.name, flavour, fmt)
    return path if path.exists() else None


def root_partition_offset(raw: Path) -> int:
    """Byte offset of a built disk's root filesystem (its largest partition), read with sfdisk: the e2e tests
    mount it with ``-o loop,offset=...`` (this host has no device-mapper for partition nodes)."""
    done = subprocess.run(["sfdisk", "-J", str(raw)], check=True, capture_output=True, text=True)
    table = json.loads(done.stdout)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    return int(max(table["partitions"], key=lambda p: int(p["size"]))["start"]) * sector
