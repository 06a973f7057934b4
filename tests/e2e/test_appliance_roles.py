"""Issue 3's proof: the built disk, booted under plain QEMU as secstorage, consoleproxy and router with the
command line delivered through qemu-guest-agent, honours CloudStack's boot contract.

Per VM: SSH on 3922 with the given key and bound to the control NIC, hostname from ``name=``, the role's
iptables rules and services, the patch delivered over SSH and acted on, no failed systemd units, and for
secstorage and consoleproxy the ``cloud`` service running the test agent, which reports to the listener.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from systemvm import contract, sshwait, testagent
from systemvm.mgmt_listener import ManagementListener
from systemvm.patch import deliver_patch, ssh_session
from systemvm.qemu_boot import QemuVM
from tests.e2e.artifacts import raw_disks, version

pytestmark = pytest.mark.e2e

ROLES = ("secstorage", "consoleproxy", "router")
NAMES = {"secstorage": "s-11-VM", "consoleproxy": "v-12-VM", "router": "r-13-VM"}
MACHINE_IDS: dict[tuple[str, str], str] = {}


class Booted:
    """One booted VM with the patch delivered, and a way to run commands on it."""

    def __init__(self, vm: QemuVM, key: Path, public: str, listener: ManagementListener, payload) -> None:
        self.vm, self.key, self.public, self.listener, self.payload = vm, key, public, listener, payload
        self.role = vm.role
        self.name = vm.name
        self.params = contract.parse_cmdline(vm.cmdline)

    def sh(self, command: str, check: bool = True) -> str:
        with ssh_session("127.0.0.1", self.vm.ssh_port, self.key) as client:
            _, stdout, stderr = client.exec_command(command, timeout=120)
            out = stdout.read().decode(errors="replace")
            status = stdout.channel.recv_exit_status()
        if check and status != 0:
            raise AssertionError(
                f"{command!r} exited {status}: {out}{stderr.read().decode(errors='replace')}"
            )
        return out

    def diagnostics(self) -> str:
        return self.sh("tail -n 40 /var/log/cloud.log; systemctl --failed --no-legend; "
                       "journalctl -b -p warning --no-pager | tail -n 30", check=False)  # fmt: skip


@pytest.fixture(
    scope="module", params=[(f, r) for f in ("amd64", "i386") for r in ROLES], ids=lambda p: "-".join(p)
)
def booted(request, tmp_path_factory):
    flavour, role = request.param
    disk = raw_disks().get(flavour)
    if disk is None:
        pytest.skip(f"no {flavour} raw disk (SYSTEMVM_ARTIFACTS is not set or the build did not make it)")
    work = tmp_path_factory.mktemp(f"{flavour}-{role}")
    (work / "vm").mkdir()
    key, public = sshwait.make_keypair(work / "keys")
    payload = testagent.build_payload(work / "payload", payload_id=f"e2e-{flavour}-{role}")
    with ManagementListener() as listener:
        with QemuVM(disk, role=role, authorized_key=public, name=NAMES[role], mgmt_port=listener.port,
                    work_dir=work / "vm", extra={"heartbeat": "2"}) as vm:  # fmt: skip
            vm.wait_ssh(key, timeout=600)
            try:
                deliver_patch("127.0.0.1", vm.ssh_port, key, payload, timeout=300)
            except TimeoutError as exc:
                raise AssertionError(f"{exc}\n--- console ---\n{vm.console_tail()}") from None
            yield Booted(vm, key, public, listener, payload)


def test_ssh_key_hostname_and_release(booted):
    assert booted.sh("hostname").strip() == booted.name
    keys = booted.sh("stat -c '%a' /root/.ssh/authorized_keys; cat /root/.ssh/authorized_keys").splitlines()
    assert keys[0] == "600" and keys[1].strip() == booted.public
    assert booted.sh("cat /etc/cloudstack-release").startswith(f"Cloudstack Release {version()} ")
    cmdline = booted.sh(f"cat {contract.CMDLINE_PATH}").strip()
    assert contract.parse_cmdline(cmdline) == booted.params  # delivered through qemu-guest-agent


def test_sshd_listens_on_3922_on_the_control_nic_only(booted):
    control = contract.control_nic(booted.role)
    ip = booted.params[f"{control}ip"]
    listening = booted.sh("ss -Htln").split()
    local = {word for word in listening if ":" in word and not word.startswith("[")}
    assert f"{ip}:3922" in local
    assert not any(addr.endswith(":22") for addr in local)
    assert "0.0.0.0:3922" not in local
    addresses = booted.sh(f"ip -4 -o addr show dev {control}")
    assert f"inet {ip}/" in addresses


def test_firewall_rules_of_the_role_are_loaded(booted):
    control = contract.control_nic(booted.role)
    saved = booted.sh(f"cat {contract.RULES_V4_PATH}")
    loaded = booted.sh("iptables -S")
    assert "-P INPUT DROP" in loaded and "-P FORWARD DROP" in loaded
    assert f"-A INPUT -i {control} -p tcp -m tcp --dport 3922 -j ACCEPT" in loaded
    for port in contract.ROLE_PORTS[booted.role]:
        assert f"--dport {port} -j ACCEPT" in loaded
    expected = contract.firewall_rules_v4(
        booted.role, control, tuple(f"eth{i}" for i in range(contract.nic_count(booted.role)))
    )
    assert saved == expected


def test_role_services_and_no_failed_units(booted):
    enabled, disabled = contract.service_lists(booted.role)
    assert booted.sh(f"cat {contract.ENABLED_SVCS_PATH}").split() == list(enabled)
    assert booted.sh(f"cat {contract.DISABLED_SVCS_PATH}").split() == list(disabled)
    state = booted.sh("systemctl is-system-running --wait", check=False).strip()
    failed = booted.sh("systemctl --failed --no-legend --plain").strip()
    assert failed == "" and state == "running", f"{state}: {failed}\n{booted.diagnostics()}"
    active = {s: booted.sh(f"systemctl is-active {s}", check=False).strip() for s in enabled + disabled}
    # nfs-common is masked by Debian: its parts start on demand
    wrong = [s for s in enabled if s != "nfs-common" and active[s] != "active"]
    wrong += [s for s in disabled if active[s] == "active"]
    assert not wrong, f"services in the wrong state: {wrong}\n{booted.diagnostics()}"
    assert booted.sh("systemctl is-enabled ssh", check=False).strip() == "disabled"


def test_patch_applied_and_agent_reports(booted):
    marker = booted.sh(f"cat /{testagent.SCRIPTS_MARKER}").strip()
    assert marker == booted.payload.payload_id
    assert booted.sh(f"test -f {contract.BOOT_DONE_PATH} && echo done").strip() == "done"
    if booted.role not in contract.AGENT_ROLES:
        assert booted.sh("systemctl is-active cloud", check=False).strip() != "active"
        return
    record = booted.listener.wait_for(booted.name, heartbeats=2, timeout=180)
    assert record.role == booted.role
    assert booted.sh("systemctl is-active cloud").strip() == "active"
    assert "Agent started" in booted.sh(f"cat {contract.CLOUD_LOG}")
    properties = booted.sh(f"cat {shlex.quote(contract.AGENT_PROPERTIES)}").splitlines()
    assert f"type={booted.role}" in properties and f"port={booted.listener.port}" in properties


def test_machine_id_is_unique_per_clone(booted):
    machine_id = booted.sh("cat /etc/machine-id").strip()
    assert len(machine_id) == 32 and machine_id != "uninitialized"
    others = {k: v for k, v in MACHINE_IDS.items() if k != (booted.vm.disk.name, booted.role)}
    assert machine_id not in others.values(), "two clones of the template share a machine-id"
    MACHINE_IDS[(booted.vm.disk.name, booted.role)] = machine_id
