"""Timings of the VMware path against vcsim (numbers to print, never pass/fail)."""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from systemvm.boot.hypervisors.base import BootRequest
from systemvm.boot.hypervisors.vmware import VmwareDriver
from systemvm.contract import BootArgs
from systemvm.export.formats.ova import write_ova
from tests.standins.vcsim.vcsim import start_vcsim


def time_vmware_flow(artifact: Path | None = None, flavour: str = "amd64") -> list[tuple[str, str]]:
    """Rows of (what, measurement): vcsim start, OVA export of a test disk (unless ``artifact`` is given),
    import to power-on (CreateImportSpec, ImportVApp, upload, reconfigure, power on) and destroy."""
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="svmt-bench-vmware-") as work:
        if artifact is None:
            raw = Path(work) / "disk.raw"
            with open(raw, "wb") as f:
                f.truncate(256 << 20)
                for i in range(0, 256, 4):  # 1 MiB of text and 1 MiB of noise every 4 MiB
                    f.seek(i << 20)
                    f.write(f"block {i:08d} ".encode() * (1 << 16))
                    f.write(random.Random(i).randbytes(1 << 20))
            artifact = Path(work) / "bench.ova"
            start = time.monotonic()
            write_ova(raw, artifact, name="svmt-bench", flavour=flavour, epoch=1_700_000_000)
            rows.append(("ova export, 256 MiB disk (128 MiB data)", f"{time.monotonic() - start:.2f} s"))
        rows.append(("ova size", f"{artifact.stat().st_size / 2**20:.1f} MiB"))
        start = time.monotonic()
        server = start_vcsim()
        rows.append(("vcsim build (cached) + start", f"{time.monotonic() - start:.2f} s"))
        try:
            request = BootRequest(
                artifact=artifact,
                flavour=flavour,
                boot_args=BootArgs(
                    role="secstorage",
                    name="s-1-VM",
                    nics=[("169.254.3.7", "255.255.0.0"), ("192.0.2.10", "255.255.255.0")],
                    authorized_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEbench bench@svmt",
                ),
            )
            driver = VmwareDriver(server.settings())
            start = time.monotonic()
            driver.import_and_start(request)
            rows.append(("vmware (vcsim): import to power-on", f"{time.monotonic() - start:.2f} s"))
            start = time.monotonic()
            driver.destroy()
            rows.append(("vmware (vcsim): power off + destroy", f"{time.monotonic() - start:.2f} s"))
        finally:
            server.stop()
    return rows


if __name__ == "__main__":
    for what, value in time_vmware_flow():
        print(f"{what:45} {value}")
