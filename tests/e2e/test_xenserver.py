"""The XenServer driver's whole flow against the XAPI stand-in (no XenServer can run here).

The real exports go through the same flow in the matrix (tests/e2e/test_matrix.py: every flavour x role
against the stand-in), so no test here repeats that upload.
"""

from __future__ import annotations

import bz2
import os
import socket
from pathlib import Path

import pytest

from systemvm import contract
from systemvm.boot.hypervisors.base import BootRequest
from systemvm.boot.hypervisors.xenserver import CMDLINE_KEY, XenServerDriver
from systemvm.errors import UserError
from systemvm.export.decompress import sha512_of
from systemvm.export.formats.vhd import write_dynamic_vhd
from tests.standins.xapi import DEFAULT_NETWORK, DEFAULT_SR, XapiStandin

pytestmark = pytest.mark.e2e
MIB = 2**20
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHarnessKeyForTests harness"


@pytest.fixture(autouse=True)
def unpacked_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of unpacked artifacts of the test's own (the user's stays untouched)."""
    cache = tmp_path / "unpacked"
    monkeypatch.setenv("SYSTEMVM_CACHE_DIR", str(cache))
    return cache


@pytest.fixture()
def xapi():
    with XapiStandin() as standin:
        yield standin


def settings_for(xapi: XapiStandin, **overrides: str) -> dict[str, str]:
    return {
        "url": xapi.url,
        "user": xapi.user,
        "password": xapi.password,
        "sr": DEFAULT_SR,
        "network": DEFAULT_NETWORK,
        **overrides,
    }


@pytest.fixture(scope="module")
def small_vhd(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("xen")
    raw = directory / "disk.raw"
    with open(raw, "wb") as handle:
        handle.truncate(10 * MIB)
        handle.write(b"\xeb\x63\x90" + os.urandom(509))  # something boot-sector-like at 0
        handle.seek(5 * MIB)
        handle.write(os.urandom(3 * MIB))
    vhd = directory / "systemvmtemplate-test-x86_64-xen.vhd"
    write_dynamic_vhd(raw, vhd)
    return vhd


@pytest.fixture(scope="module")
def small_vhd_bz2(small_vhd: Path) -> Path:
    target = small_vhd.with_name(small_vhd.name + ".bz2")
    target.write_bytes(bz2.compress(small_vhd.read_bytes()))
    return target


def boot_args(role: str, control_ip: str = "169.254.9.9") -> contract.BootArgs:
    if contract.nic_count(role) == 2:
        nics = [("10.1.1.1", "255.255.255.0"), (control_ip, "255.255.0.0")]
    else:
        nics = [(control_ip, "255.255.0.0")]
    return contract.BootArgs(role=role, name=f"{role}-1-VM", nics=nics, authorized_key=KEY)


def request_for(artifact: Path, role: str, tmp_path: Path, **kwargs) -> BootRequest:
    return BootRequest(
        artifact=artifact,
        flavour="amd64",
        boot_args=boot_args(role, **kwargs),
        work_dir=tmp_path,
        ssh_timeout=2,
    )


def created(xapi: XapiStandin, prefix: str) -> dict[str, int]:
    vms = [r for r in xapi.records("VM").values() if r["name_label"].startswith(prefix)]
    vdis = [r for r in xapi.records("VDI").values() if r["name_label"].startswith(prefix)]
    return {
        "VM": len(vms),
        "VDI": len(vdis),
        "VBD": len(xapi.records("VBD")),
        "VIF": len(xapi.records("VIF")),
        "task": len(xapi.records("task")),
    }


NOTHING = {"VM": 0, "VDI": 0, "VBD": 0, "VIF": 0, "task": 0}


def check_flow(xapi: XapiStandin, artifact: Path, vhd: Path, role: str, tmp_path: Path) -> None:
    driver = XenServerDriver(settings_for(xapi), poll_interval=0.05)
    request = request_for(artifact, role, tmp_path)
    target = driver.import_and_start(request)
    try:
        assert target.port == 3922
        assert target.host == "169.254.9.9"
        (vm,) = [r for r in xapi.records("VM").values() if r["name_label"].startswith(request.run_prefix)]
        assert vm["name_label"] == f"{request.run_prefix}-{role}-amd64"
        assert vm["power_state"] == "Running" and not vm["is_a_template"]
        assert "disks" not in vm["other_config"]
        assert vm["HVM_boot_policy"] == "BIOS order" and vm["HVM_boot_params"]["order"].startswith("d")
        assert vm["memory_static_max"] == str(request.memory_mib * MIB)
        cmdline = request.boot_args.to_cmdline()
        assert vm["xenstore_data"][CMDLINE_KEY] == cmdline.replace(" ", "%")
        assert " " not in vm["xenstore_data"][CMDLINE_KEY]
        vifs = [xapi.records("VIF")[ref] for ref in vm["VIFs"]]
        assert sorted(v["device"] for v in vifs) == [str(i) for i in range(contract.nic_count(role))]
        network = xapi.find("network", DEFAULT_NETWORK)[0]
        assert all(v["network"] == network and v["currently_attached"] for v in vifs)
        (vbd,) = [xapi.records("VBD")[ref] for ref in vm["VBDs"]]
        assert vbd["bootable"] and vbd["mode"] == "RW" and vbd["type"] == "Disk" and vbd["userdevice"] == "0"
        vdi = xapi.records("VDI")[vbd["VDI"]]
        assert vdi["name_label"].startswith(request.run_prefix)
        from systemvm.export.formats.vhd import vhd_virtual_size

        assert int(vdi["virtual_size"]) >= vhd_virtual_size(vhd)
        assert xapi.vdi_file(vbd["VDI"]).read_bytes() == vhd.read_bytes()  # the upload arrived intact
        assert created(xapi, request.run_prefix)["task"] == 0  # our import task was destroyed
        if artifact != vhd:  # a .bz2 is unpacked once into the cache, named by its digest, and kept there
            (copy,) = (tmp_path / "unpacked").glob("*.vhd")
            assert copy.name == f"{sha512_of(artifact)}.vhd" and copy.read_bytes() == vhd.read_bytes()
        assert driver.timings["import"] > 0
    finally:
        driver.destroy()
    assert created(xapi, request.run_prefix) == NOTHING
    assert not driver.session


@pytest.mark.parametrize("role", ["secstorage", "router"])
def test_flow_with_vhd(xapi, small_vhd, tmp_path, role):
    check_flow(xapi, small_vhd, small_vhd, role, tmp_path)


def test_flow_with_bz2_artifact(xapi, small_vhd, small_vhd_bz2, tmp_path):
    check_flow(xapi, small_vhd_bz2, small_vhd, "consoleproxy", tmp_path)


def test_guest_metrics_address_wins(xapi, small_vhd, tmp_path):
    driver = XenServerDriver(settings_for(xapi), poll_interval=0.05)
    request = request_for(small_vhd, "router", tmp_path)
    try:
        driver.import_and_start(request)
        xapi.publish_guest_networks(driver.vm_ref, {"0/ip": "10.1.1.1", "1/ip": "169.254.44.2"})
        assert driver.address(request) == "169.254.44.2"  # eth1 is the router's control NIC
    finally:
        driver.destroy()


def test_failed_ssh_wait_destroys_everything(xapi, small_vhd, tmp_path):
    with socket.socket() as probe:  # a closed port on 127.0.0.1: SSH never answers
        probe.bind(("127.0.0.1", 0))
    driver = XenServerDriver(settings_for(xapi), poll_interval=0.05)
    request = request_for(small_vhd, "secstorage", tmp_path, control_ip="127.0.0.1")
    with pytest.raises(UserError, match="did not answer within"):
        driver.create(request)
    assert created(xapi, request.run_prefix) == NOTHING


def test_interrupt_during_import_destroys_everything(xapi, small_vhd, tmp_path):
    class Interrupted(XenServerDriver):
        def build_vm(self, request, vdi, network):
            super().build_vm(request, vdi, network)
            raise KeyboardInterrupt  # Ctrl-C right after the VM exists

    driver = Interrupted(settings_for(xapi), poll_interval=0.05)
    request = request_for(small_vhd, "router", tmp_path)
    with pytest.raises(KeyboardInterrupt):
        driver.create(request)
    assert created(xapi, request.run_prefix) == NOTHING


def test_cleanup_leftovers(xapi, small_vhd, tmp_path):
    driver = XenServerDriver(settings_for(xapi), poll_interval=0.05)
    request = request_for(small_vhd, "secstorage", tmp_path)
    driver.import_and_start(request)  # a killed run: destroy() never called
    before = len(xapi.records("VM"))
    removed = XenServerDriver.cleanup_leftovers(request.run_prefix, settings=settings_for(xapi))
    assert sorted(r.split()[0] for r in removed) == ["VDI", "VM"]
    assert created(xapi, request.run_prefix) == NOTHING
    assert len(xapi.records("VM")) == before - 1  # templates and dom0 untouched


# ------------------------------------------------------------------------------------------ error cases


def test_broken_vhd(xapi, small_vhd, tmp_path):
    broken = tmp_path / "broken.vhd"
    data = bytearray(small_vhd.read_bytes())
    data[512 + 36] ^= 0x55  # dynamic header checksum no longer matches
    broken.write_bytes(bytes(data))
    driver = XenServerDriver(settings_for(xapi), poll_interval=0.05)
    request = request_for(broken, "secstorage", tmp_path)
    with pytest.raises(UserError, match=r"VDI_IO_ERROR: Device I/O errors") as info:
        driver.create(request)
    assert "\n" not in str(info.value)
    assert created(xapi, request.run_prefix) == NOTHING
    assert any("header" in line.lower() for line in xapi.log if line.startswith("vhd-tool"))


def test_chunked_upload_is_refused(xapi, small_vhd, tmp_path):
    driver = XenServerDriver(settings_for(xapi), poll_interval=0.05)
    try:
        sr = driver.find_sr(DEFAULT_SR)
        vdi = driver.api.VDI.create(
            {
                "name_label": "svmt-chunked",
                "name_description": "",
                "SR": sr,
                "virtual_size": str(16 * MIB),
                "type": "user",
                "sharable": False,
                "read_only": False,
                "other_config": {},
            }
        )
        driver.vdi_ref = vdi
        with pytest.raises(UserError, match=r"INTERNAL_ERROR: Cannot handle encoding: chunked"):
            driver.upload(small_vhd, vdi, "svmt-chunked", chunked=True)
        assert not xapi.vdi_file(vdi).exists()
    finally:
        driver.destroy()
    assert created(xapi, "svmt-chunked") == NOTHING


def test_wrong_password(xapi, small_vhd, tmp_path):
    driver = XenServerDriver(settings_for(xapi, password="wrong"))
    with pytest.raises(UserError, match="SESSION_AUTHENTICATION_FAILED") as info:
        driver.create(request_for(small_vhd, "secstorage", tmp_path))
    assert "PASSWORD" in str(info.value)


def test_unknown_sr(xapi, small_vhd, tmp_path):
    driver = XenServerDriver(settings_for(xapi, sr="No such SR"))
    request = request_for(small_vhd, "secstorage", tmp_path)
    with pytest.raises(UserError, match="no SR named 'No such SR'.*Local storage"):
        driver.create(request)
    assert created(xapi, request.run_prefix) == NOTHING


def test_unknown_network(xapi, small_vhd, tmp_path):
    driver = XenServerDriver(settings_for(xapi, network="nope"))
    with pytest.raises(UserError, match="no network named 'nope'"):
        driver.create(request_for(small_vhd, "secstorage", tmp_path))


def test_unreachable_host(small_vhd, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = {"url": f"http://127.0.0.1:{port}", "user": "root", "password": "x", "sr": "s", "network": "n"}
    with pytest.raises(UserError, match="unreachable"):
        XenServerDriver(settings).create(request_for(small_vhd, "secstorage", tmp_path))


def test_wrong_artifact_format(xapi, tmp_path):
    qcow2 = tmp_path / "systemvmtemplate-kvm.qcow2"
    qcow2.write_bytes(b"QFI\xfb" + bytes(4092))
    driver = XenServerDriver(settings_for(xapi))
    request = request_for(qcow2, "secstorage", tmp_path)
    with pytest.raises(UserError, match="is not a VHD"):
        driver.create(request)
    assert created(xapi, request.run_prefix) == NOTHING


def test_missing_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("SYSTEMVM_CONFIG", str(tmp_path / "none.ini"))
    for key in list(os.environ):
        if key.startswith("SYSTEMVM_XENSERVER_"):
            monkeypatch.delenv(key)
    with pytest.raises(UserError, match="setting 'url' is missing"):
        XenServerDriver()


def test_settings_from_environment(xapi, monkeypatch, tmp_path, small_vhd):
    monkeypatch.setenv("SYSTEMVM_CONFIG", str(tmp_path / "none.ini"))
    for key, value in settings_for(xapi).items():
        monkeypatch.setenv(f"SYSTEMVM_XENSERVER_{key.upper()}", value)
    driver = XenServerDriver(poll_interval=0.05)
    assert driver.verify is True  # TLS verification on unless explicitly disabled
    request = request_for(small_vhd, "secstorage", tmp_path)
    try:
        driver.import_and_start(request)
    finally:
        driver.destroy()
    assert created(xapi, request.run_prefix) == NOTHING
