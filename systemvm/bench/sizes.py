"""Bench section ``sizes``: what each flavour's build and KVM file weigh, against amd64 and against the files
CloudStack publishes where their size is known."""

from __future__ import annotations

import json
from pathlib import Path

from systemvm import naming
from systemvm.bench.table import Rows
from systemvm.progress import human_bytes

# Sizes of CloudStack's own published KVM files, where a public source gives one (``ls -h`` units: MiB).
# x86_64 4.20.0: the download directory listing quoted in apache/cloudstack PR 9437 (2024-08-06 rebuild).
# aarch64: no listing, issue, pull request or documentation page we found gives the size of any
# systemvmtemplate-*-aarch64-kvm.qcow2.bz2, so there is nothing to compare with.
CLOUDSTACK_KVM_SIZES: dict[str, tuple[int | None, str]] = {
    "x86_64": (509 * 2**20, "4.20.0, listing in apache/cloudstack PR 9437"),
    "aarch64": (None, "not published in any listing, issue or documentation page found"),
}


def _manifest(artifacts: Path, version: str, flavour: str) -> dict | None:
    path = naming.manifest(artifacts, version, flavour)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def bench_sizes(flavours: list[str], version: str, artifacts: Path) -> Rows:
    """Per flavour: root filesystem used, raw disk allocated and the published KVM file, each with its ratio
    to amd64's; then the KVM file against CloudStack's published one of the same architecture."""
    rows: Rows = []
    measured: dict[str, dict[str, int]] = {}
    for flavour in dict.fromkeys(["amd64", *flavours]):  # amd64 is what the others are compared with
        manifest = _manifest(artifacts, version, flavour)
        kvm = naming.version_dir(artifacts, version) / naming.export_name(version, flavour, "qcow2")
        if manifest is None:
            if flavour in flavours:
                rows.append(
                    (f"{flavour}: sizes", f"skipped: no {naming.manifest(artifacts, version, flavour)}")
                )
            continue
        measured[flavour] = {
            "root filesystem used": manifest["sizes"]["rootfs_used_bytes"],
            "raw disk allocated": manifest["sizes"]["raw_disk_allocated_bytes"],
        }
        if kvm.is_file():
            measured[flavour]["kvm.qcow2.bz2"] = kvm.stat().st_size
    base = measured.get("amd64", {})
    for flavour in flavours:
        for what, size in measured.get(flavour, {}).items():
            versus = f", {size / base[what]:.2f} x amd64" if flavour != "amd64" and base.get(what) else ""
            rows.append((f"{flavour}: {what}", f"{human_bytes(size)}{versus}"))
        kvm_bytes = measured.get(flavour, {}).get("kvm.qcow2.bz2")
        arch = naming.ARCH_OF[flavour]
        if kvm_bytes is None or arch not in CLOUDSTACK_KVM_SIZES:
            continue
        published, source = CLOUDSTACK_KVM_SIZES[arch]
        label = f"{flavour}: kvm.qcow2.bz2 vs CloudStack's {arch}"
        if published is None:
            rows.append((label, f"unknown ({source})"))
        else:
            rows.append((label, f"{human_bytes(kvm_bytes)} vs {human_bytes(published)} ({source}), "
                                f"{kvm_bytes / published:.2f} x"))  # fmt: skip
    return rows
