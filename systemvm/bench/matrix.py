"""Bench section ``matrix``: the whole KVM matrix's wall time and each cell's."""

from __future__ import annotations

import time
from pathlib import Path

from systemvm import naming
from systemvm.boot.harness import artifact_path
from systemvm.check.matrix import MATRIX_ROLES, jobs_for_host, plan_matrix, run_matrix
from systemvm.defaults import ARTIFACTS_DIR, DEFAULT_VERSION


def bench_matrix(
    version: str = DEFAULT_VERSION, artifacts: Path | None = None, jobs: int | None = None
) -> list[tuple[str, str]]:
    """Rows for ``invoke bench``: wall time of the whole KVM matrix (every flavour x 3 roles) and per cell."""
    root = Path(artifacts) if artifacts else ARTIFACTS_DIR
    shape = f"{len(naming.FLAVOURS)} flavours x {len(MATRIX_ROLES)} roles"
    missing = [f for f in naming.FLAVOURS if not artifact_path(root, version, f, "kvm").is_file()]
    if missing:
        return [(f"kvm matrix ({shape})", f"skipped: no KVM export for {', '.join(missing)}")]
    cells = plan_matrix("kvm")
    limit = jobs_for_host(jobs)
    start = time.monotonic()
    results = run_matrix(cells, version, root, limit)
    wall = time.monotonic() - start
    passed = sum(r.status == "PASS" for r in results)
    rows = [
        (f"kvm matrix wall time ({shape})", f"{wall:.0f} s ({wall / 60:.1f} min)"),
        ("kvm matrix jobs at once", str(limit)),
        ("kvm matrix cells passed", f"{passed} of {len(results)}"),
    ]
    rows += [(f"kvm matrix cell {r.cell.label}", f"{r.status} in {r.seconds:.0f} s") for r in results]
    return rows
