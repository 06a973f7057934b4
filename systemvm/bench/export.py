"""Bench sections ``export`` and ``sbom``: each format's time, size and ratio; the SBOM's cost."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from systemvm import naming
from systemvm.bench.table import Rows
from systemvm.export import publish
from systemvm.export.export import allocated_bytes
from systemvm.progress import human_bytes


def bench_export(raw: Path, tmp: Path, formats: list[str] | None = None) -> list[tuple[str, str]]:
    """Rows (what, numbers): per format time, output size and ratio to the raw disk's allocated bytes;
    then plain bzip2 versus lbzip2 on the qcow2. ``formats``: the flavour's published ones (arm64: qcow2
    only; default all)."""
    from systemvm.export.formats.qcow2 import write_qcow2
    from systemvm.export.formats.vhd import write_dynamic_vhd

    formats = list(naming.FORMATS) if formats is None else formats
    raw, tmp = Path(raw), Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    allocated = max(1, allocated_bytes(raw))
    rows: list[tuple[str, str]] = [("raw allocated", human_bytes(allocated))]

    def timed(label: str, action: Callable[[], object], output: Path) -> float:
        start = time.monotonic()
        action()
        took = time.monotonic() - start
        size = output.stat().st_size
        rows.append((label, f"{took:.1f} s, {human_bytes(size)}, ratio {size / allocated:.3f}"))
        return took

    qcow2 = tmp / "bench.qcow2"
    vhd = tmp / "bench.vhd"
    timed("qcow2 (qemu-img -c)", lambda: write_qcow2(raw, qcow2), qcow2)
    if "vhd" in formats:
        timed("vhd (our writer)", lambda: write_dynamic_vhd(raw, vhd, timestamp=0), vhd)
        timed("vhd.bz2", lambda: publish.compress_bz2(vhd, tmp / "bench.vhd.bz2"), tmp / "bench.vhd.bz2")
    if "ova" in formats:
        from systemvm.export.formats import ova

        out = tmp / "bench.ova"
        timed("ova", lambda: ova.write_ova(raw, out, name="bench", flavour="amd64", epoch=0), out)
    plain = tmp / "bench.plain.bz2"
    parallel = tmp / "bench.parallel.bz2"
    timed("qcow2.bz2 with bzip2", lambda: publish.compress_bz2(qcow2, plain, parallel=False), plain)
    if shutil.which("lbzip2"):
        timed(
            f"qcow2.bz2 with lbzip2 ({os.cpu_count()} CPUs)",
            lambda: publish.compress_bz2(qcow2, parallel, parallel=True),
            parallel,
        )
        rows.append(("lbzip2 output identical across runs", str(publish.lbzip2_usable())))
    for path in tmp.glob("bench*"):
        path.unlink()
    return rows


def bench_sbom(flavours: list[str], version: str, artifacts: Path) -> Rows:
    """Per flavour with a build manifest: time to make the SBOM and to validate it, its size and counts."""
    from systemvm.export import sbom

    rows: Rows = []
    for flavour in flavours:
        path = naming.manifest(artifacts, version, flavour)
        if not path.is_file():
            rows.append((f"{flavour}: SBOM", f"skipped: no {path.name}; run 'invoke build' first"))
            continue
        manifest = json.loads(path.read_text())
        start = time.monotonic()
        text = sbom.render_sbom(manifest, int(manifest.get("source_date_epoch", 0)))
        made = time.monotonic() - start
        start = time.monotonic()
        errors = sbom.schema_errors(text)
        checked = time.monotonic() - start
        components = json.loads(text)["components"]
        files = sum(1 for c in components if c["type"] == "file")
        rows += [
            (f"{flavour}: SBOM generation", f"{made:.2f} s"),
            (
                f"{flavour}: SBOM schema validation",
                f"{checked:.2f} s, {'valid' if not errors else errors[0]}",
            ),
            (
                f"{flavour}: SBOM size",
                f"{human_bytes(len(text.encode()))}, {len(components) - files} packages, {files} artifacts",
            ),  # fmt: skip
        ]
    return rows
