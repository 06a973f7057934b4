"""The KVM driver's domain XML, NIC plans and artifact handling (no VM is started here)."""

from __future__ import annotations

import bz2
import concurrent.futures
import dataclasses
import hashlib
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from lxml import etree

from systemvm import contract
from systemvm.boot import testnet
from systemvm.boot.hypervisors import kvm, registry
from systemvm.errors import UserError
from systemvm.export import decompress

QEMU = {"qemu": kvm.QEMU_NS}


def spec(tmp_path: Path, role: str = "secstorage", domain_type: str = "qemu", production: bool = False):
    network = (
        kvm.ProductionNetwork.for_role(role)
        if production
        else testnet.plan_test_network(role, "s-1-VM", 40022)
    )
    return kvm.DomainSpec(
        name="svmt-abc123-s-1-VM",
        domain_type=domain_type,
        disk=tmp_path / "disk.qcow2",
        console_log=tmp_path / "console.log",
        network=network,
        run_as_root=not production,
    )


def parse(xml: str) -> etree._Element:
    return etree.fromstring(xml.encode())


def test_tcg_domain_has_no_host_cpu_and_kvm_domain_passes_the_cpu_through(tmp_path: Path) -> None:
    tcg = parse(kvm.domain_xml(spec(tmp_path, domain_type="qemu")))
    hw = parse(kvm.domain_xml(spec(tmp_path, domain_type="kvm")))
    assert tcg.get("type") == "qemu" and tcg.find("cpu") is None
    assert hw.get("type") == "kvm" and hw.find("cpu").get("mode") == "host-passthrough"


def test_disk_is_the_virtio_overlay(tmp_path: Path) -> None:
    root = parse(kvm.domain_xml(spec(tmp_path)))
    (disk,) = root.findall("devices/disk")
    assert disk.find("source").get("file") == str(tmp_path / "disk.qcow2")
    assert disk.find("driver").get("type") == "qcow2"
    assert disk.find("target").get("bus") == "virtio"


def test_serial_console_is_logged_to_the_file_and_agent_channel_exists(tmp_path: Path) -> None:
    root = parse(kvm.domain_xml(spec(tmp_path)))
    assert root.find("devices/serial/log").get("file") == str(tmp_path / "console.log")
    (channel,) = root.findall("devices/channel")
    assert channel.get("type") == "unix"
    target = channel.find("target")
    assert (target.get("type"), target.get("name")) == ("virtio", "org.qemu.guest_agent.0")


@pytest.mark.parametrize("role", ["secstorage", "consoleproxy", "router"])
def test_test_mode_nics_are_user_networks_with_3922_forwarded(tmp_path: Path, role: str) -> None:
    root = parse(kvm.domain_xml(spec(tmp_path, role)))
    assert root.findall("devices/interface") == []  # libvirt's user NIC cannot forward ports
    args = root.xpath("qemu:commandline/qemu:arg/@value", namespaces=QEMU)
    netdevs = [a for p, a in zip(args, args[1:], strict=False) if p == "-netdev"]
    devices = [a for p, a in zip(args, args[1:], strict=False) if p == "-device"]
    assert len(netdevs) == len(devices) == contract.nic_count(role)
    assert all(d.startswith("virtio-net-pci,") for d in devices)
    forwards = [n for n in netdevs if "hostfwd=tcp:127.0.0.1:40022-" in n]
    assert len(forwards) == 1 and forwards[0].endswith(":3922")
    control = int(contract.control_nic(role)[3:])
    assert "net=169.254.0.0/16" in netdevs[control] and "host=169.254.0.1" in netdevs[control]
    slots = [d.split("addr=")[1] for d in devices]
    assert slots == sorted(slots) and len(set(slots)) == len(slots)  # eth0, eth1 in PCI order


@pytest.mark.parametrize("role", ["secstorage", "router"])
def test_production_mode_bridges_the_control_nic_to_cloud0(tmp_path: Path, role: str) -> None:
    root = parse(kvm.domain_xml(spec(tmp_path, role, production=True)))
    assert root.find("qemu:commandline", namespaces=QEMU) is None
    assert root.find("seclabel") is None
    interfaces = root.findall("devices/interface")
    assert len(interfaces) == contract.nic_count(role)
    assert all(i.get("type") == "bridge" and i.find("model").get("type") == "virtio" for i in interfaces)
    control = int(contract.control_nic(role)[3:])
    assert interfaces[control].find("source").get("bridge") == "cloud0"
    assert interfaces[control].find("mac").get("address").startswith("0e:00:a9:fe:")


@pytest.mark.skipif(shutil.which("virt-xml-validate") is None, reason="libvirt-clients not installed")
@pytest.mark.parametrize("production", [False, True])
def test_domain_xml_validates_against_libvirts_schema(tmp_path: Path, production: bool) -> None:
    path = tmp_path / "domain.xml"
    path.write_text(kvm.domain_xml(spec(tmp_path, "router", production=production)))
    result = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_unknown_domain_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown domain type"):
        kvm.domain_xml(spec(tmp_path, domain_type="xen"))


def test_pinned_nic_args_leave_other_devices_alone() -> None:
    args = [
        "-device",
        "virtio-net-pci,netdev=a",
        "-device",
        "virtio-rng-pci",
        "-device",
        "virtio-net-pci,netdev=b",
    ]
    assert kvm.pinned_nic_args(args) == [
        "-device", "virtio-net-pci,netdev=a,bus=pci.0,addr=0x10",
        "-device", "virtio-rng-pci",
        "-device", "virtio-net-pci,netdev=b,bus=pci.0,addr=0x11",
    ]  # fmt: skip


# ---------------------------------------------------------------------------------- artifacts (real qemu-img)


def make_qcow2(path: Path) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "8M"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", str(path)], check=True, capture_output=True
    )
    return path


def sha(path: Path) -> str:
    return hashlib.sha512(path.read_bytes()).hexdigest()


def test_bz2_artifact_is_decompressed_once_into_a_cache_named_by_its_sha512(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = make_qcow2(tmp_path / "plain.qcow2")
    packed = tmp_path / "t-kvm.qcow2.bz2"
    packed.write_bytes(bz2.compress(plain.read_bytes()))
    cache = tmp_path / "cache"
    first = kvm.prepare_artifact(packed, cache)
    assert first == cache / f"{sha(packed)}.qcow2"
    assert first.read_bytes() == plain.read_bytes()
    inode = first.stat().st_ino
    monkeypatch.setattr(decompress, "decompress_bz2", lambda *a: pytest.fail("unpacked a second time"))
    assert kvm.prepare_artifact(packed, cache) == first and first.stat().st_ino == inode
    # no temporary left behind (the lock file stays: removing a lock others may wait on is a race)
    assert sorted(p.name for p in cache.iterdir()) == sorted([first.name, decompress.LOCK_NAME])


def test_runs_starting_together_decompress_an_artifact_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Matrix cells of one flavour start at the same moment: one decompresses, the others wait for it."""
    plain = make_qcow2(tmp_path / "plain.qcow2")
    packed = tmp_path / "t-kvm.qcow2.bz2"
    packed.write_bytes(bz2.compress(plain.read_bytes()))
    cache = tmp_path / "cache"
    calls: list[Path] = []
    real = decompress.decompress_bz2

    def slow_decompress(source: Path, target: Path) -> None:
        calls.append(target)
        time.sleep(0.3)  # long enough for the other threads to reach the lock
        real(source, target)

    monkeypatch.setattr(decompress, "decompress_bz2", slow_decompress)
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        paths = list(pool.map(lambda _: kvm.prepare_artifact(packed, cache), range(3)))
    assert len(calls) == 1
    assert paths == [cache / f"{sha(packed)}.qcow2"] * 3
    assert paths[0].read_bytes() == plain.read_bytes()


def test_plain_qcow2_is_used_in_place(tmp_path: Path) -> None:
    plain = make_qcow2(tmp_path / "plain.qcow2")
    assert kvm.prepare_artifact(plain, tmp_path / "cache") == plain.resolve()


@pytest.mark.parametrize("content", [b"\0" * 4096, bz2.compress(b"\0" * 4096)])
def test_artifact_of_the_wrong_format_is_one_line_error(tmp_path: Path, content: bytes) -> None:
    wrong = tmp_path / "disk.bin"
    wrong.write_bytes(content)
    with pytest.raises(UserError, match="qcow2") as info:
        kvm.prepare_artifact(wrong, tmp_path / "cache")
    assert "\n" not in str(info.value)
    assert [p.name for p in (tmp_path / "cache").glob("*")] in ([], [decompress.LOCK_NAME])


def test_missing_artifact_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        kvm.prepare_artifact(tmp_path / "nope.qcow2.bz2")


def test_writes_go_to_the_overlay_and_never_to_the_artifact(tmp_path: Path) -> None:
    artifact = make_qcow2(tmp_path / "artifact.qcow2")
    before = sha(artifact)
    overlay = tmp_path / "overlay.qcow2"
    kvm.create_overlay(artifact, overlay)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 2M", str(overlay)], check=True, capture_output=True
    )
    assert sha(artifact) == before
    read = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "read -P 0x11 0 2M", str(overlay)], capture_output=True, text=True
    )
    assert "Pattern verification failed" not in read.stdout and read.returncode == 0
    info = subprocess.run(
        ["qemu-img", "info", str(overlay)], capture_output=True, text=True, check=True
    ).stdout
    assert f"backing file: {artifact}" in info


# ---------------------------------------------------------------------------------- registry


def test_registry_gives_the_kvm_driver_with_options() -> None:
    plan = testnet.plan_test_network("router", "r-1-VM", 40023)
    driver = registry.get_driver("kvm", network=plan, domain_type="qemu")
    assert isinstance(driver, kvm.KvmDriver) and driver.network is plan


def test_registry_refuses_unknown_hypervisor() -> None:
    with pytest.raises(UserError, match="unknown hypervisor 'hyperv'"):
        registry.get_driver("hyperv")


def test_boot_failure_carries_the_console_tail() -> None:
    failure = kvm.BootFailure(
        "vm: SSH on 127.0.0.1:1 did not answer within 5 s", "Kernel panic - not syncing"
    )
    assert str(failure).splitlines()[0].endswith("within 5 s")
    assert "Kernel panic" in str(failure)


# ---------------------------------------------------------------------------------------------- arm64


def arm64_spec(tmp_path: Path, domain_type: str = "qemu", role: str = "router") -> kvm.DomainSpec:
    return kvm.DomainSpec(
        name="svmt-abc123-r-1-VM",
        domain_type=domain_type,
        disk=tmp_path / "disk.qcow2",
        console_log=tmp_path / "console.log",
        network=testnet.plan_test_network(role, "r-1-VM", 40022),
        run_as_root=True,
        flavour="arm64",
        nvram=tmp_path / "VARS.fd",
    )


def test_arm64_is_an_aarch64_virt_machine_booting_aavmf_with_its_own_variable_store(tmp_path: Path) -> None:
    root = parse(kvm.domain_xml(arm64_spec(tmp_path)))
    os_type = root.find("os/type")
    assert (os_type.get("arch"), os_type.get("machine"), os_type.text) == ("aarch64", "virt", "hvm")
    loader = root.find("os/loader")
    assert (loader.text, loader.get("type"), loader.get("readonly")) == (
        "/usr/share/AAVMF/AAVMF_CODE.fd", "pflash", "yes",
    )  # fmt: skip
    nvram = root.find("os/nvram")
    assert nvram.text == str(tmp_path / "VARS.fd")  # this VM's copy: empty, so no boot entry
    assert nvram.get("template") == "/usr/share/AAVMF/AAVMF_VARS.fd"
    assert root.find("features/apic") is None  # an x86 device
    cpu = root.find("cpu")
    assert (cpu.get("mode"), cpu.find("model").text) == ("custom", "cortex-a72")  # TCG emulates it cheaply
    serial_target = root.find("devices/serial/target")
    assert (serial_target.get("type"), serial_target.find("model").get("name")) == ("system-serial", "pl011")
    assert root.find("devices/serial/log").get("file") == str(tmp_path / "console.log")
    (channel,) = root.findall("devices/channel")
    assert channel.find("target").get("name") == "org.qemu.guest_agent.0"
    assert root.find("devices/disk/target").get("bus") == "virtio"


def test_arm64_test_nics_sit_on_the_pcie_root_bus_in_nic_order(tmp_path: Path) -> None:
    root = parse(kvm.domain_xml(arm64_spec(tmp_path)))
    args = root.xpath("qemu:commandline/qemu:arg/@value", namespaces=QEMU)
    devices = [a for p, a in zip(args, args[1:], strict=False) if p == "-device"]
    assert len(devices) == contract.nic_count("router")
    assert all(d.startswith("virtio-net-pci,") and ",bus=pcie.0," in d for d in devices)  # "virt" is PCIe
    slots = [d.split("addr=")[1] for d in devices]
    assert slots == sorted(slots) and len(set(slots)) == len(slots)


def test_arm64_under_kvm_passes_the_host_cpu_through(tmp_path: Path) -> None:
    root = parse(kvm.domain_xml(arm64_spec(tmp_path, domain_type="kvm")))
    assert root.find("cpu").get("mode") == "host-passthrough"


def test_arm64_without_a_variable_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="arm64 boots through UEFI"):
        kvm.domain_xml(dataclasses.replace(arm64_spec(tmp_path), nvram=None))


@pytest.mark.skipif(shutil.which("virt-xml-validate") is None, reason="libvirt-clients not installed")
def test_arm64_domain_xml_validates_against_libvirts_schema(tmp_path: Path) -> None:
    path = tmp_path / "domain.xml"
    path.write_text(kvm.domain_xml(arm64_spec(tmp_path)))
    result = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_foreign_guest_runs_under_tcg_whatever_the_host_offers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYSTEMVM_DOMAIN_TYPE", "kvm")  # the host's own guests would get KVM
    probe = kvm.choose_accel("arm64", host="x86_64")
    assert probe.domain_type == "qemu" and "aarch64 guest on an x86_64 host" in probe.reason
    assert kvm.choose_accel("arm64", "qemu", host="x86_64").domain_type == "qemu"
    with pytest.raises(UserError, match="KVM cannot run an aarch64 guest on an x86_64 host"):
        kvm.choose_accel("arm64", "kvm", host="x86_64")
    assert kvm.choose_accel("amd64", host="x86_64").domain_type == "kvm"  # the environment decides there
    assert kvm.choose_accel("arm64", host="aarch64").domain_type == "kvm"  # on an Arm host, as native


def test_unknown_flavour_for_a_domain_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown flavour 'armhf'"):
        kvm.domain_xml(dataclasses.replace(arm64_spec(tmp_path), flavour="armhf"))
