"""The storage and console VMs' NICs on the network lab: the NIC plan, the command line keys CloudStack sends
for their public and management NICs, the template the lab serves and the suite's lab parameters (no VM, no
namespace, no root)."""

from __future__ import annotations

import bz2
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from systemvm import contract
from systemvm.boot import harness, testnet
from systemvm.check import suite
from systemvm.lab import agentlab, netlab

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyForTests test"
PLAN = netlab.LabPlan()


def lab_nics(role: str) -> testnet.LabNics:
    return testnet.LabNics(guest_tap=None, public_tap="nl0001t0", public_ip=PLAN.public_ip(role))


def lab_plan(role: str) -> testnet.TestNetwork:
    return testnet.plan_test_network(role, harness.vm_name(role), 40023, lab=lab_nics(role))


@pytest.mark.parametrize("role", ["secstorage", "consoleproxy"])
def test_a_lab_gives_control_management_and_public_nics_in_cloudstacks_order(role: str) -> None:
    plan = lab_plan(role)
    control, management, public = plan.nics
    assert [n.index for n in plan.nics] == [0, 1, 2]
    assert control.forward_ssh and control.tap is None and f"eth{control.index}" == contract.control_nic(role)
    assert management.tap is None and not management.forward_ssh
    assert management.network == str(testnet.MGMT_NET) and management.guest_ip == "10.1.2.1"
    assert (public.tap, public.guest_ip, public.netmask) == (
        "nl0001t0",
        PLAN.public_ip(role),
        "255.255.255.0",
    )
    assert plan.taps == ["nl0001t0"] and plan.gateway == PLAN.server_ip
    assert len({n.mac for n in plan.nics}) == 3


def test_each_role_has_its_own_public_address() -> None:
    addresses = {role: PLAN.public_ip(role) for role in testnet.LAB_ROLES}
    assert addresses == {
        "router": "198.51.100.10",
        "secstorage": "198.51.100.11",
        "consoleproxy": "198.51.100.12",
    }
    with pytest.raises(netlab.LabError, match="no public address for a dhcpsrvr"):
        PLAN.public_ip("dhcpsrvr")


def test_the_storage_vms_command_line_names_its_public_and_private_devices() -> None:
    plan = lab_plan("secstorage")
    args = contract.parse_cmdline(testnet.boot_args(plan, "s-1-VM", KEY, 8250).to_cmdline())
    assert (args["eth2ip"], args["eth2mask"], args["gateway"]) == (
        "198.51.100.11",
        "255.255.255.0",
        "198.51.100.1",
    )
    assert (args["eth1ip"], args["eth1mask"]) == ("10.1.2.1", "255.255.255.0")
    assert args["public.network.device"] == "eth2" and args["private.network.device"] == "eth1"
    assert "mgmtcidr" in args and "localgw" in args and "vncport" not in args
    assert args["nic_macs"] == contract.nic_macs_value([n.mac for n in plan.nics])


def test_the_console_proxys_command_line_carries_its_public_nic_and_vnc_port() -> None:
    args = contract.parse_cmdline(
        testnet.boot_args(lab_plan("consoleproxy"), "v-1-VM", KEY, 8250).to_cmdline()
    )
    assert (args["eth2ip"], args["gateway"]) == ("198.51.100.12", "198.51.100.1")
    assert args["vncport"] == "8080" and "public.network.device" not in args


@pytest.mark.parametrize("role", ["secstorage", "consoleproxy"])
def test_without_a_lab_the_agent_roles_plan_is_unchanged(role: str) -> None:
    plain = testnet.plan_test_network(role, harness.vm_name(role), 40023)
    assert len(plain.nics) == 1 and plain.gateway is None and plain.taps == []
    cmdline = testnet.boot_args(plain, harness.vm_name(role), KEY, 8250).to_cmdline()
    for key in ("eth1ip", "eth2ip", "gateway=", "vncport", "public.network.device"):
        assert key not in cmdline


def test_the_routers_plan_is_what_it_was() -> None:
    router = testnet.LabNics(guest_tap="nl0001t0", public_tap="nl0001t1")
    plan = testnet.plan_test_network("router", "r-1-VM", 40023, lab=router)
    assert [(n.index, n.tap, n.guest_ip) for n in plan.nics if n.tap] == [
        (0, "nl0001t0", "10.1.1.1"),
        (2, "nl0001t1", "198.51.100.10"),
    ]
    assert testnet.public_nic_keys(plan) == {}


def test_the_suite_boots_kvm_routers_storage_and_console_vms_in_a_lab() -> None:
    assert [r for r in contract.ROLES if suite.wants_lab("kvm", r)] == [
        "secstorage",
        "consoleproxy",
        "router",
    ]
    assert not suite.wants_lab("xenserver", "secstorage")


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_the_template_is_a_bzip2ed_qcow2_of_the_size_made(tmp_path: Path) -> None:
    packed = agentlab.template_image(tmp_path, 8 << 20)
    image = tmp_path / "back.qcow2"
    image.write_bytes(bz2.decompress(packed))
    header = image.read_bytes()[:32]
    assert header[:4] == b"QFI\xfb" and struct.unpack(">Q", header[24:32])[0] == 8 << 20
    info = subprocess.run(["qemu-img", "info", str(image)], capture_output=True, text=True, check=True)
    assert "virtual size: 8 MiB" in info.stdout
    assert list(tmp_path.iterdir()) == [image]  # the uncompressed image made is not left behind


class _Service:
    def __init__(self, access_log: Path, files: dict[str, Path]) -> None:
        self.access_log, self.files = access_log, files


def test_the_lab_params_tell_the_storage_checks_the_export_and_the_download(tmp_path: Path) -> None:
    lab = netlab.NetLab("nl0001", PLAN, tmp_path)
    http: Any = _Service(tmp_path / "public-http.access.log", {})
    nfs: Any = _Service(tmp_path / "x", {"export": tmp_path / "nfs" / "export"})
    params = agentlab.AgentLab(lab, "secstorage", public_http=http, nfs=nfs).params(["nl0001t0"])
    assert params["public_ip"] == "198.51.100.11" and params["public_dev"] == "eth2"
    assert params["netns"]["server"] == "nl0001-server" and params["taps"] == ["nl0001t0"]
    assert params["template"] == {
        "url": "http://198.51.100.1/template.qcow2.bz2",
        "virtual_size": 64 << 20,
        "access_log": str(tmp_path / "public-http.access.log"),
    }
    assert params["nfs"] == {
        "server": "198.51.100.1",
        "export": "/export",
        "versions": ["3", "4"],
        "directory": str(tmp_path / "nfs" / "export"),
    }
    assert "ports" not in params


def test_the_lab_params_tell_the_console_checks_the_ports(tmp_path: Path) -> None:
    params = agentlab.AgentLab(netlab.NetLab("nl0001", PLAN, tmp_path), "consoleproxy").params([])
    assert params["public_ip"] == "198.51.100.12"
    assert params["ports"] == {"open": [443, 80, 8080], "closed": [22, 3922, 8001]}
    assert "nfs" not in params and "template" not in params


def test_an_agent_lab_is_for_the_agent_roles_only() -> None:
    with pytest.raises(agentlab.UserError, match="not a router"):
        with agentlab.agent_lab("router"):
            pass
