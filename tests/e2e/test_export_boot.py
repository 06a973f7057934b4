"""Issue 4's last proof: exported disks, read back by independent readers, boot to SSH on 3922.

The VHD is decompressed with Python's bz2 and converted by qemu-img's own VHD reader (``-f vpc``); the
OVA's VMDK is taken out of the tar with Python's tarfile and converted by qemu-img's VMDK reader. Each
flavour is covered once (amd64 through the VHD, i386 through the OVA) to keep CI within its time.
"""

from __future__ import annotations

import bz2
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from systemvm.boot import sshwait
from systemvm.boot.qemu import QemuVM
from tests.e2e import artifacts

pytestmark = pytest.mark.e2e


def vhd_to_qcow2(artifact: Path, tmp: Path) -> Path:
    vhd = tmp / "disk.vhd"
    with bz2.open(artifact, "rb") as src, open(vhd, "wb") as dst:
        shutil.copyfileobj(src, dst, 8 << 20)
    out = tmp / "from-vhd.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "qcow2", str(vhd), str(out)], check=True)
    vhd.unlink()
    return out


def ova_to_qcow2(artifact: Path, tmp: Path) -> Path:
    with tarfile.open(artifact) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".vmdk"))
        tar.extract(member, tmp, filter="data")
    out = tmp / "from-vmdk.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-f", "vmdk", "-O", "qcow2", str(tmp / member.name), str(out)], check=True
    )
    (tmp / member.name).unlink()
    return out


@pytest.mark.parametrize(("flavour", "fmt"), [("amd64", "vhd"), ("i386", "ova")])
def test_exported_disk_read_back_boots_to_ssh(flavour: str, fmt: str, tmp_path: Path) -> None:
    artifact = artifacts.export(flavour, fmt)
    if artifact is None:
        pytest.skip("SYSTEMVM_ARTIFACTS is not set (invoke ci sets it after building)")
    disk = vhd_to_qcow2(artifact, tmp_path) if fmt == "vhd" else ova_to_qcow2(artifact, tmp_path)
    key, public = sshwait.make_keypair(tmp_path)
    with QemuVM(
        disk, role="consoleproxy", authorized_key=public, name=f"v-{fmt}-VM", work_dir=tmp_path
    ) as vm:
        vm.wait_ssh(key, timeout=600)
        assert sshwait.try_ssh("127.0.0.1", vm.ssh_port, key, command="hostname") == f"v-{fmt}-VM\n"
