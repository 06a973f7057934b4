"""The VMware flow (pyvmomi) against govmomi's vcsim: import our OVA, deliver machine.id, power on, destroy.

vcsim guests never boot, so these tests stop before the SSH wait (``import_and_start``); the OVA is ours,
written from a small raw disk made here. vcsim accepts any uploaded bytes: the disk itself is proved by
tests/unit/test_ova.py.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from systemvm.boot.hypervisors.base import BootRequest
from systemvm.boot.hypervisors.vmware import VmwareDriver, find_vm
from systemvm.contract import BootArgs
from systemvm.errors import UserError
from systemvm.export.formats.ova import write_ova
from tests.standins.vcsim.fixture import vcsim  # noqa: F401 - the session fixture
from tests.standins.vcsim.vcsim import Vcsim

pytestmark = pytest.mark.e2e
MiB = 1 << 20


@pytest.fixture(scope="module")
def ova(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("vmware-ova")
    raw = work / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(40 * MiB)
        f.seek(MiB)
        f.write(b"systemvm-vmware-e2e" * 4096)
    out = work / "systemvmtemplate-test-x86_64-vmware.ova"
    write_ova(raw, out, name="systemvmtemplate-test-x86_64", flavour="amd64", epoch=1_700_000_000)
    return out


def boot_request(artifact: Path, role: str = "secstorage") -> BootRequest:
    args = BootArgs(
        role=role,
        name="s-1-VM",
        nics=[("169.254.3.7", "255.255.0.0"), ("192.0.2.10", "255.255.255.0")],
        authorized_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEtest test@svmt",
    )
    return BootRequest(artifact=artifact, flavour="amd64", boot_args=args)


def vms_with_prefix(vcsim: Vcsim, prefix: str) -> list[str]:  # noqa: F811
    driver = VmwareDriver(vcsim.settings())
    try:
        content = driver.connect().RetrieveContent()
        from pyVmomi import vim

        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        try:
            return [vm.name for vm in view.view if vm.name.startswith(prefix)]
        finally:
            view.Destroy()
    finally:
        driver.disconnect()


def test_import_configure_power_on_and_destroy(vcsim: Vcsim, ova: Path) -> None:  # noqa: F811
    request = boot_request(ova)
    driver = VmwareDriver(vcsim.settings())
    address = driver.import_and_start(request).host
    try:
        assert driver.warnings == []
        assert address == "192.0.2.10"  # secstorage on VMware: control NIC is eth1
        vm = driver.vm
        assert vm.name == f"{request.run_prefix}-s-1-VM"
        extra = {o.key: o.value for o in vm.config.extraConfig}
        assert extra["machine.id"] == request.boot_args.to_cmdline()
        assert vm.runtime.powerState == "poweredOn"
        assert vm.config.guestId == "debian10_64Guest"
        assert vm.config.version == "vmx-13"
        nics = [
            d for d in vm.config.hardware.device if d.__class__.__name__ == "vim.vm.device.VirtualVmxnet3"
        ]
        assert len(nics) == 2
        assert all(n.backing.deviceName == "VM Network" for n in nics)
        controllers = [d for d in vm.config.hardware.device if "LsiLogic" in d.__class__.__name__]
        disks = [d for d in vm.config.hardware.device if d.__class__.__name__ == "vim.vm.device.VirtualDisk"]
        assert len(controllers) == 1 and len(disks) == 1
        assert disks[0].capacityInKB == 40 * 1024
        assert vms_with_prefix(vcsim, request.run_prefix) == [vm.name]
    finally:
        driver.destroy()
    assert vms_with_prefix(vcsim, request.run_prefix) == []
    driver.destroy()  # safe twice


def test_router_gets_two_nics_and_its_address(vcsim: Vcsim, ova: Path) -> None:  # noqa: F811
    request = boot_request(ova, role="router")
    with VmwareDriver(vcsim.settings()) as driver:
        assert driver.import_and_start(request).host == "192.0.2.10"
        nics = [d for d in driver.vm.config.hardware.device if "Vmxnet3" in d.__class__.__name__]
        assert len(nics) == 2
    assert vms_with_prefix(vcsim, request.run_prefix) == []


def test_cleanup_leftovers_removes_a_killed_run(vcsim: Vcsim, ova: Path) -> None:  # noqa: F811
    request = boot_request(ova)
    driver = VmwareDriver(vcsim.settings())
    driver.import_and_start(request)
    driver.vm = None  # as if the run was killed before its teardown
    driver.disconnect()
    assert len(vms_with_prefix(vcsim, request.run_prefix)) == 1
    removed = VmwareDriver.cleanup_leftovers(request.run_prefix, settings=vcsim.settings())
    assert removed == [f"{request.run_prefix}-s-1-VM"]
    assert vms_with_prefix(vcsim, request.run_prefix) == []


def test_wrong_password(vcsim: Vcsim, ova: Path) -> None:  # noqa: F811
    driver = VmwareDriver(vcsim.settings(password="not-the-password"))
    with pytest.raises(
        UserError, match=r"login to 127\.0\.0\.1:\d+ as 'svmt' failed \(wrong user or password\)"
    ):
        driver.import_and_start(boot_request(ova))


def test_missing_datastore(vcsim: Vcsim, ova: Path) -> None:  # noqa: F811
    request = boot_request(ova)
    driver = VmwareDriver(vcsim.settings(datastore="NoSuchDS"))
    with pytest.raises(
        UserError, match=r"datastore 'NoSuchDS' not found in datacenter 'DC0' \(available: LocalDS_0\)"
    ):
        driver.import_and_start(request)
    assert vms_with_prefix(vcsim, request.run_prefix) == []


def test_missing_network(vcsim: Vcsim, ova: Path) -> None:  # noqa: F811
    driver = VmwareDriver(vcsim.settings(network="NoSuchNet"))
    with pytest.raises(UserError, match=r"network 'NoSuchNet' not found in datacenter 'DC0'"):
        driver.import_and_start(boot_request(ova))


def test_unreachable_host(ova: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = {
        "url": f"https://127.0.0.1:{port}/sdk",
        "user": "u",
        "password": "p",
        "cluster": "C",
        "datastore": "D",
        "network": "N",
        "verify_tls": "false",
    }
    with pytest.raises(UserError, match=rf"cannot reach 127\.0\.0\.1:{port} .*check the url setting"):
        VmwareDriver(settings).import_and_start(boot_request(ova))


def test_tls_verification_is_on_by_default(vcsim: Vcsim, ova: Path) -> None:  # noqa: F811
    settings = vcsim.settings()
    del settings["verify_tls"]
    with pytest.raises(UserError, match="TLS certificate of 127.0.0.1:.* is not trusted"):
        VmwareDriver(settings).connect()
    trusted = VmwareDriver({**settings, "ca_file": str(vcsim.cert_file)})
    try:
        assert trusted.connect().content.about.apiType == "VirtualCenter"
    finally:
        trusted.disconnect()


def test_wrong_artifact_format(vcsim: Vcsim, tmp_path: Path) -> None:  # noqa: F811
    qcow2 = tmp_path / "systemvmtemplate-test-x86_64-kvm.qcow2"
    qcow2.write_bytes(b"QFI\xfb" + bytes(4092))
    with pytest.raises(UserError, match="is not an OVA"):
        VmwareDriver(vcsim.settings()).import_and_start(boot_request(qcow2))
    bz2 = tmp_path / "x.ova.bz2"
    bz2.write_bytes(b"BZh91AY&SY" + bytes(100))
    with pytest.raises(UserError, match="is bzip2-compressed"):
        VmwareDriver(vcsim.settings()).import_and_start(boot_request(bz2))


def test_settings_come_from_environment(vcsim: Vcsim, ova: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("SYSTEMVM_CONFIG", "/nonexistent/hypervisors.ini")
    for key, value in vcsim.settings().items():
        monkeypatch.setenv(f"SYSTEMVM_VMWARE_{key.upper()}", value)
    request = boot_request(ova)
    with VmwareDriver() as driver:
        driver.import_and_start(request)
        assert find_vm(driver.si, f"{request.run_prefix}-s-1-VM") is not None
    assert vms_with_prefix(vcsim, request.run_prefix) == []
