"""The boot harness's planning, listener and front door (no VM: these run in a second)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from systemvm import contract
from systemvm.boot import harness
from systemvm.errors import UserError

REPO = Path(__file__).resolve().parents[2]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHarnessTestKey harness"


@pytest.mark.parametrize("role", contract.ROLES)
def test_kvm_plan_matches_the_test_network_and_the_contract(role: str) -> None:
    plan = harness.plan_boot("kvm", role, harness.vm_name(role), KEY, 40123)
    args = contract.parse_cmdline(plan.boot_args.to_cmdline())
    assert plan.driver_options["network"] is plan.network
    assert len(plan.boot_args.nics) == contract.nic_count(role)
    control = contract.control_nic(role)
    assert args[f"{control}ip"].startswith("169.254.")
    assert (args["host"], args["port"], args["type"]) == ("169.254.0.1", "40123", role)


@pytest.mark.parametrize("role", contract.ROLES)
def test_kvm_plan_sends_the_cheap_optional_keys(role: str) -> None:
    """The keys the appliance checks look for; every one reads back without a problem."""
    plan = harness.plan_boot("kvm", role, harness.vm_name(role), KEY, 40123)
    config = contract.read_config(contract.parse_cmdline(plan.boot_args.to_cmdline()))
    assert config.problems == []
    assert plan.network is not None and config.nic_macs == [n.mac for n in plan.network.nics]
    assert config.ntp_servers == ["127.0.0.1", "localhost"] and config.vm_password
    assert config.disable_rp_filter == (role == "router")
    ipv6 = [n for n in config.nics.values() if n.ip6]
    if role in ("router", "dhcpsrvr"):  # a router with a data NIC: IPv6 there, never on the control NIC
        assert [n.name for n in ipv6] == ["eth0"] and config.gateway6 and config.dns[-1] == "::1"
    else:
        assert ipv6 == [] and config.gateway6 is None
    other = harness.plan_boot("kvm", role, harness.vm_name(role), KEY, 40123)
    assert other.boot_args.extra["vmpassword"] != plan.boot_args.extra["vmpassword"]  # one per boot


def test_vmware_plan_puts_ssh_on_the_management_nic() -> None:
    plan = harness.plan_boot("vmware", "secstorage", "s-1-VM", KEY, 8250)
    args = contract.parse_cmdline(plan.boot_args.to_cmdline())
    assert len(plan.boot_args.nics) == 2
    assert not args["eth1ip"].startswith("169.254.")


def test_xenserver_plan_puts_ssh_on_link_local_eth0() -> None:
    plan = harness.plan_boot("xenserver", "consoleproxy", "v-1-VM", KEY, 8250)
    args = contract.parse_cmdline(plan.boot_args.to_cmdline())
    assert args["eth0ip"].startswith("169.254.") and args["host"] == contract.LINK_LOCAL_HOST


def test_artifact_path_names_the_hypervisor_export(tmp_path: Path) -> None:
    assert harness.artifact_path(tmp_path, "4.20.0", "i386", "kvm").name == (
        "systemvmtemplate-4.20.0-i386-kvm.qcow2.bz2"
    )
    assert harness.artifact_path(tmp_path, "4.20.0", "amd64", "xenserver").name.endswith("x86_64-xen.vhd.bz2")
    assert harness.flavour_of(Path("systemvmtemplate-4.20.0-i386-kvm.qcow2.bz2")) == "i386"


def test_suite_params_carry_what_the_listener_received(tmp_path: Path) -> None:
    from systemvm.boot.hypervisors.base import SshTarget
    from systemvm.boot.listener import ManagementListener

    with ManagementListener() as listener:
        with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as agent:
            startup = {"kind": "startup", "name": "s-1-VM", "role": "secstorage"}
            agent.sendall(json.dumps(startup).encode() + b"\n")
            listener.wait_for_startup("s-1-VM", timeout=10)
        target = SshTarget("127.0.0.1", 40022, key_file=tmp_path / "id")
        vm = harness.BootedVM("kvm", "amd64", "secstorage", "s-1-VM", "svmt-000000", target, tmp_path / "id",
                              listener, "type=secstorage", driver=None, work_dir=tmp_path)  # fmt: skip
        params = vm.suite_params()
    assert params["listener"]["messages"][0]["name"] == "s-1-VM"
    assert params["target"] == f"paramiko://root@127.0.0.1:40022?ssh_identity_file={tmp_path / 'id'}"
    assert "-p 40022" in vm.how_to_reach() and "root@127.0.0.1" in vm.how_to_reach()


def test_missing_artifact_fails_before_anything_is_created(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist: build and export it first"):
        with harness.boot_system_vm(
            harness.VmRequest("kvm", "amd64", "router", artifacts=tmp_path, work_dir=tmp_path)
        ):
            pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["boot", "--hypervisor", "hyperv"], "unknown hypervisor 'hyperv'"),
        (["boot", "--flavour", "armhf"], "unknown flavour 'armhf'"),
        (["boot", "--artifact", "/nonexistent/x-kvm.qcow2.bz2"], "does not exist"),
        (["destroy", "--name", "foo"], "is not a run prefix"),
    ],
)
def test_boot_task_bad_input_is_one_line_and_exit_2(argv: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "invoke", *argv], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_failed_boot_leaves_its_whole_console_where_asked(tmp_path: Path, monkeypatch) -> None:
    """The console lives in the run's work directory, which the teardown removes: a failed boot copies
    all of it to ``console_to`` first (the matrix's <cell>.console.log), not only the error's tail."""
    from systemvm.boot.hypervisors import registry

    console = "\n".join(f"line {n}" for n in range(100))
    destroyed: list[bool] = []

    class Fails:
        timings: dict[str, float] = {}

        def create(self, request: object) -> None:
            raise RuntimeError("SSH on 3922 did not answer")

        def console_log(self) -> str:
            return console

        def destroy(self) -> None:
            destroyed.append(True)

    monkeypatch.setattr(registry, "get_driver", lambda name, **options: Fails())
    artifact = tmp_path / "disk.qcow2.bz2"
    artifact.write_bytes(b"x")
    saved = tmp_path / "cell.console.log"
    with pytest.raises(RuntimeError, match="did not answer"):
        with harness.boot_system_vm(
            harness.VmRequest(
                "kvm", "amd64", "router", artifact=artifact, work_dir=tmp_path, console_to=saved
            )
        ):
            pass
    assert saved.read_text() == console and destroyed == [True]
