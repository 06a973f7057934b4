"""Our GRUB placement really boots: a tiny disk assembled by systemvm.build.disk runs grub.cfg under
QEMU (TCG)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from systemvm.build import disk

pytestmark = pytest.mark.e2e
GRUB_LIB = Path("/usr/lib/grub/i386-pc")


@pytest.mark.skipif(
    not GRUB_LIB.is_dir() or shutil.which("qemu-system-x86_64") is None, reason="needs grub-pc-bin, QEMU"
)
@pytest.mark.parametrize("bus", ["ide", "virtio"])
def test_embedded_grub_reads_its_config_from_the_partition(tmp_path: Path, bus: str) -> None:
    root = tmp_path / "root"
    modules = root / "boot" / "grub" / "i386-pc"
    modules.mkdir(parents=True)
    for mod in list(GRUB_LIB.glob("*.mod")) + list(GRUB_LIB.glob("*.lst")):
        shutil.copy(mod, modules)
    (root / "boot" / "grub" / "grub.cfg").write_text(
        "serial --unit=0 --speed=115200\nterminal_output serial\necho GRUB-READ-OUR-CONFIG\nhalt\n"
    )
    core = tmp_path / "core.img"
    subprocess.run(
        ["grub-mkimage", "-O", "i386-pc", "-o", str(core), "-p", "(hd0,msdos1)/boot/grub",
         "biosdisk", "part_msdos", "ext2"],
        check=True,
    )  # fmt: skip
    fs = tmp_path / "fs.img"
    with open(fs, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-L", "cloudrootfs", "-d", str(root), str(fs)], check=True)
    image = tmp_path / "disk.raw"
    disk.assemble_disk(fs, image, (GRUB_LIB / "boot.img").read_bytes(), core.read_bytes())
    serial = tmp_path / "serial.log"
    subprocess.run(
        ["qemu-system-x86_64", "-accel", "tcg", "-m", "128", "-display", "none", "-nodefaults", "-no-reboot",
         "-serial", f"file:{serial}", "-drive", f"file={image},format=raw,if={bus}"],
        timeout=60, check=False,
    )  # fmt: skip
    assert "GRUB-READ-OUR-CONFIG" in serial.read_text(errors="replace")
