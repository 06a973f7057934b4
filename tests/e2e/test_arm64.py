"""The arm64 flavour (CloudStack's aarch64 KVM template), built and booted on an x86 host.

- The built disk reads back: a GPT with the EFI system partition and the arm64 root, GRUB's EFI program at
  the removable-media path, the kernel command line with both serial consoles.
- UEFI firmware (AAVMF, under TCG) with an empty variable store, as every new VM made from the template has,
  runs GRUB from that path and GRUB reads its configuration from the root filesystem; with the program
  only at the path a plain ``grub-install`` uses, the firmware finds nothing to boot (the case fails).
- CI's arm64 cell: a router through libvirt (aarch64 ``virt`` machine, TCG) to SSH on 3922, inside the
  network lab, through the whole appliance suite, as ``invoke test --flavour arm64 --role router`` runs it,
  without the restart pass (CI's amd64 router cell has it; a second emulated aarch64 boot costs minutes).
  The other arm64 roles, and the arm64 router's restart, run in ``invoke matrix``.

Artifacts: ``SYSTEMVM_ARTIFACTS`` (``invoke ci`` sets it after building every flavour).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from systemvm import hosttools, naming
from systemvm.build import image, uefidisk
from tests.e2e import artifacts

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
RAW = artifacts.raw_disks().get("arm64")
needs_raw = pytest.mark.skipif(
    RAW is None, reason="no arm64 raw disk in SYSTEMVM_ARTIFACTS (invoke ci builds it)"
)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting the root filesystem needs root")
GRUB_MARK = "GRUB-READ-OUR-CONFIG"
SHELL_MARK = "Shell>"  # AAVMF's own shell: what the firmware runs when it found nothing to boot


@contextlib.contextmanager
def mounted_root(raw: Path) -> Iterator[Path]:
    """The built disk's root filesystem (partition 2), read-only through a loop device at its offset."""
    _, partitions = uefidisk.read_gpt(raw)
    root = next(p for p in partitions if p.type_guid == uefidisk.ROOT_TYPE)
    with tempfile.TemporaryDirectory(prefix="svmt-arm64-root-") as where:
        subprocess.run(
            ["mount", "-o", f"ro,loop,offset={root.start},sizelimit={root.size}", str(raw), where], check=True
        )
        try:
            yield Path(where)
        finally:
            subprocess.run(["umount", where], check=True)


@needs_raw
def test_the_arm64_disk_is_gpt_with_grub_at_the_removable_path() -> None:
    assert RAW is not None
    disk_guid, partitions = uefidisk.read_gpt(RAW)
    assert disk_guid == uefidisk.DISK_GUID
    assert [(p.type_guid, p.name) for p in partitions] == [
        (uefidisk.ESP_TYPE, uefidisk.ESP_NAME),
        (uefidisk.ROOT_TYPE, uefidisk.ROOT_NAME),
    ]
    manifest = artifacts.manifest("arm64")
    assert manifest is not None and manifest["arch"] == "aarch64"
    record = manifest["disk"]
    assert record["partition_table"] == "gpt" and record["efi_program"] == "EFI/BOOT/BOOTAA64.EFI"
    program = uefidisk.esp_file(RAW, record["esp_start_bytes"])
    assert program.startswith(b"MZ") and len(program) == record["efi_program_bytes"]
    assert b"arm64-efi" in program  # grub-mkimage's platform, as the image's GRUB made it
    assert "linux-image-arm64" in manifest["packages"] and "grub-efi-arm64-bin" in manifest["packages"]
    assert "grub-pc-bin" not in manifest["packages"]


@needs_raw
@needs_root
def test_the_kernel_line_names_both_serial_consoles_and_ttyama0_last() -> None:
    """CloudStack's line names ttyS0, which "virt" does not have; the PL011 (ttyAMA0) is the last console,
    so /dev/console and the harness's serial log are there."""
    assert RAW is not None
    with mounted_root(RAW) as root:
        config = (root / "boot/grub/grub.cfg").read_text()
        assert (root / "boot/grub/arm64-efi/normal.mod").is_file()
    linux = next(line.split() for line in config.splitlines() if line.strip().startswith("linux "))
    consoles = [word for word in linux if word.startswith("console=")]
    assert "console=ttyS0,115200n8" in consoles
    assert consoles[-1] == "console=ttyAMA0,115200n8"
    assert {"net.ifnames=0", "biosdevname=0", "root=LABEL=cloudrootfs"} <= set(linux)


def boot_firmware(disk: Path, work: Path, timeout: float = 240.0) -> str:
    """Run QEMU's aarch64 ``virt`` machine (TCG) with AAVMF and a fresh copy of the empty variable store
    until GRUB's mark or the firmware's shell shows on the serial port; the serial output."""
    hosttools.require_tools("qemu-system-aarch64", hosttools.AAVMF_CODE, hosttools.AAVMF_VARS)
    variables = work / "VARS.fd"
    shutil.copyfile(hosttools.AAVMF_VARS, variables)
    serial = work / "serial.log"
    proc = subprocess.Popen(
        ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-accel", "tcg", "-m", "256",
         "-display", "none", "-nodefaults", "-no-reboot", "-serial", f"file:{serial}",
         "-drive", f"if=pflash,format=raw,readonly=on,file={hosttools.AAVMF_CODE}",
         "-drive", f"if=pflash,format=raw,file={variables}",
         "-drive", f"if=virtio,format=raw,file={disk}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            text = serial.read_text(errors="replace") if serial.exists() else ""
            if GRUB_MARK in text or SHELL_MARK in text:
                break
            time.sleep(1.0)
    finally:
        proc.kill()
        proc.wait()
    return serial.read_text(errors="replace") if serial.exists() else ""


@needs_raw
@needs_root
@pytest.mark.parametrize(
    ("path", "boots"), [(uefidisk.REMOVABLE_PATH, True), ("EFI/debian/grubaa64.efi", False)]
)
def test_firmware_with_an_empty_variable_store_boots_the_removable_path(
    tmp_path: Path, path: str, boots: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image's own GRUB program and modules on a small disk of ours, its grub.cfg printing a mark: the
    firmware reaches it through EFI/BOOT/BOOTAA64.EFI only (a new VM's NVRAM holds no boot entry)."""
    assert RAW is not None
    manifest = artifacts.manifest("arm64")
    assert manifest is not None
    program = uefidisk.esp_file(RAW, manifest["disk"]["esp_start_bytes"])
    tree = tmp_path / "tree"
    (tree / "boot/grub").mkdir(parents=True)
    with mounted_root(RAW) as root:
        shutil.copytree(root / "boot/grub/arm64-efi", tree / "boot/grub/arm64-efi")
    (tree / "boot/grub/grub.cfg").write_text(f"echo {GRUB_MARK}\nhalt\n")
    fs = tmp_path / "fs.img"
    with open(fs, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-L", image.LABEL, "-d", str(tree), str(fs)], check=True)
    monkeypatch.setattr(uefidisk, "REMOVABLE_PATH", path)  # where make_esp puts the program
    disk = tmp_path / "disk.raw"
    uefidisk.assemble_uefi_disk(fs, disk, program, epoch=1_700_000_000)
    output = boot_firmware(disk, tmp_path)
    if boots:
        assert GRUB_MARK in output, output[-2000:]
    else:
        assert GRUB_MARK not in output and SHELL_MARK in output, output[-2000:]


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="the router's network lab needs root")
def test_arm64_router_passes_the_appliance_suite_under_tcg() -> None:
    """CI's arm64 cell: the router through libvirt to SSH on 3922 in the network lab, the whole suite."""
    vdir = artifacts.version_dir()
    if vdir is None or artifacts.export("arm64", "qcow2") is None:
        pytest.skip("no arm64 KVM export in SYSTEMVM_ARTIFACTS (invoke ci builds and exports it)")
    done = subprocess.run(
        [sys.executable, "-m", "systemvm.check.suite", "--hypervisor", "kvm", "--flavour", "arm64",
         "--role", "router", "--version", vdir.name, "--artifacts", str(vdir.parent), "--no-restart"],
        cwd=REPO, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    print(done.stdout[-6000:], done.stderr[-6000:])
    result = json.loads((vdir / "reports" / "kvm-arm64-router.result.json").read_text())
    assert done.returncode == 0 and result["status"] == "PASS", result
    assert result["failed"] == 0 and result["passed"] > 0
    assert naming.ARCH_OF["arm64"] == "aarch64"
