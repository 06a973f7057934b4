"""The KVM driver against the real libvirtd (started when none runs), with a disk that has no OS.

These boots never reach SSH on purpose: they show the failure paths (bounded wait, console log, teardown,
Ctrl-C) with a real domain, in seconds, without a built template.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import pytest
from lxml import etree

from systemvm.boot import testnet
from systemvm.boot.hypervisors import kvm, libvirtd
from systemvm.boot.hypervisors.base import BootRequest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def conn():
    connection = libvirtd.connect()
    yield connection
    connection.close()


SERIAL_GREETING = b"svmt boot sector: serial console works"


@pytest.fixture
def blank_disk(tmp_path: Path) -> Path:
    """A disk whose boot sector prints a greeting on COM1 and halts: no OS, no agent, no SSH."""
    # xor ax,ax; mov ds,ax; mov si,0x7c15; mov dx,0x3f8; next: lodsb; test al,al; jz done; out dx,al;
    # jmp next; done: hlt; jmp done -- then the message at 0x7c15 (offset 21)
    code = bytes.fromhex("31c08ed8be157cbaf803ac84c07403eeebf8f4ebfd")
    sector = code + SERIAL_GREETING + b"\r\n\0"
    sector += b"\0" * (510 - len(sector)) + b"\x55\xaa"
    raw = tmp_path / "bootsector.raw"
    raw.write_bytes(sector + b"\0" * (2**20 - 512))
    disk = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(disk)], check=True)
    raw.unlink()
    return disk


def request_for(disk: Path, work: Path, role: str, timeout: float) -> tuple[BootRequest, testnet.TestNetwork]:
    plan = testnet.plan_test_network(role, "s-1-VM")
    args = testnet.boot_args(plan, "s-1-VM", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyForTests test", 8250)
    return BootRequest(
        artifact=disk, flavour="amd64", boot_args=args, work_dir=work, ssh_timeout=timeout
    ), plan


def domain_names(conn) -> list[str]:
    return [d.name() for d in conn.listAllDomains(0)]


def test_domain_runs_under_libvirt_with_agent_channel_and_forwarded_ssh(conn, blank_disk, tmp_path) -> None:
    plan = testnet.plan_test_network("router", "r-1-VM")
    spec = kvm.DomainSpec(
        name="svmt-e2e000-r-1-VM",
        domain_type="qemu",
        disk=blank_disk,
        console_log=tmp_path / "console.log",
        network=plan,
        run_as_root=True,
    )
    domain = conn.defineXML(kvm.domain_xml(spec))
    try:
        domain.create()
        live = etree.fromstring(domain.XMLDesc(0).encode())
        channel = live.find("devices/channel/target[@name='org.qemu.guest_agent.0']")
        assert channel is not None and channel.get("state") in ("disconnected", "connected")
        assert live.find("devices/channel/source").get("path")  # libvirt made the agent socket
        assert (tmp_path / "console.log").exists()
        # QEMU listens on the forwarded port on 127.0.0.1 (nothing answers behind it: no OS)
        with socket.create_connection(("127.0.0.1", plan.ssh_host_port), timeout=5):
            pass
    finally:
        kvm.remove_domain(conn, spec.name)
    assert spec.name not in domain_names(conn)


def test_failed_boot_raises_with_console_and_removes_everything(conn, blank_disk, tmp_path) -> None:
    request, plan = request_for(blank_disk, tmp_path, "secstorage", timeout=15)
    driver = kvm.KvmDriver(network=plan, domain_type="qemu")
    with pytest.raises(kvm.BootFailure, match="did not take the command line within 15 s") as info:
        driver.create(request)
    assert SERIAL_GREETING.decode() in info.value.console_tail  # the serial console went to the log file
    assert not any(n.startswith(request.run_prefix) for n in domain_names(conn))
    assert not list(tmp_path.glob(f"{request.run_prefix}*"))
    assert blank_disk.exists()  # the artifact is never touched


def test_ctrl_c_during_create_removes_the_domain(conn, blank_disk, tmp_path) -> None:
    request, plan = request_for(blank_disk, tmp_path, "consoleproxy", timeout=120)
    driver = kvm.KvmDriver(network=plan, domain_type="qemu")

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(8)
    try:
        with pytest.raises(KeyboardInterrupt):
            driver.create(request)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert not any(n.startswith(request.run_prefix) for n in domain_names(conn))
    assert not list(tmp_path.glob(f"{request.run_prefix}*"))


def test_cleanup_leftovers_removes_domains_and_overlays_by_prefix(conn, blank_disk, tmp_path) -> None:
    prefix = "svmt-e2eold"
    work = tmp_path / f"{prefix}-s-1-VM{kvm.WORK_SUFFIX}"
    work.mkdir()
    overlay = work / "disk.qcow2"
    kvm.create_overlay(blank_disk, overlay)
    plan = testnet.plan_test_network("secstorage", "s-1-VM")
    spec = kvm.DomainSpec(f"{prefix}-s-1-VM", "qemu", overlay, work / "console.log", plan, run_as_root=True)
    conn.defineXML(kvm.domain_xml(spec)).create()
    stray = tmp_path / f"{prefix}-v-2-VM{kvm.WORK_SUFFIX}"  # a run killed before it defined its domain
    stray.mkdir()
    removed = kvm.KvmDriver.cleanup_leftovers(prefix, work_dir=tmp_path)
    assert spec.name in removed and str(stray) in removed
    assert spec.name not in domain_names(conn)
    assert not work.exists() and not stray.exists()
    assert blank_disk.exists()
