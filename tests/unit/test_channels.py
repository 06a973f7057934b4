"""Each hypervisor channel of the boot command line, fed with recorded inputs, and the early configuration
run end to end on a temporary root (systemvm/guest/channels.py, systemvm/guest/early_config.py)."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from systemvm import contract
from systemvm.guest import channels, early_config, postinit
from systemvm.guest.system import Guest

REPO = Path(__file__).resolve().parents[2]

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOFakeFakeFakeFakeFakeFakeFakeFakeFakeFakeFak test@harness"
CMDLINE = contract.BootArgs(
    role="secstorage", name="s-1-VM", nics=[("169.254.10.20", "255.255.0.0")], authorized_key=KEY
).to_cmdline()
# What the tools print on each hypervisor (virt-what prints one fact per line).
VIRT_WHAT = {
    "kvm": "kvm\n",
    "tcg": "qemu\n",
    "xen-hvm": "xen\nxen-hvm\n",
    "xen-pv": "xen\nxen-domU\n",
    "vmware": "vmware\n",
    "hyperv": "hyperv\n",
    "docker": "docker\n",
}


class Recorded:
    """A command runner answering from recorded outputs; unknown commands fail like a missing tool."""

    def __init__(self, outputs: dict[tuple[str, ...], str]) -> None:
        self.outputs = outputs
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> str:
        self.calls.append(argv)
        for prefix, output in self.outputs.items():
            if tuple(argv[: len(prefix)]) == prefix:
                return output
        raise FileNotFoundError(argv[0])


def kvp_record(key: str, value: str) -> bytes:
    return key.encode().ljust(channels.KVP_KEY_SIZE, b"\0") + value.encode().ljust(
        channels.KVP_VALUE_SIZE, b"\0"
    )


@pytest.mark.parametrize(
    ("facts", "channel"),
    [("kvm", "kvm"), ("tcg", "kvm"), ("xen-hvm", "xen-hvm"), ("xen-pv", "xen-pv"), ("vmware", "vmware"),
     ("hyperv", "hyperv"), ("docker", None)],
)  # fmt: skip
def test_virt_what_facts_name_the_channel(facts, channel):
    assert channels.parse_virt_what(VIRT_WHAT[facts]) == channel
    assert channels.detect_hypervisor(Recorded({("virt-what",): VIRT_WHAT[facts]}), "/nonexistent") == channel


@pytest.mark.parametrize(
    ("vendor", "product", "channel"),
    [("QEMU", "Standard PC (i440FX + PIIX, 1996)", "kvm"), ("Xen", "HVM domU", "xen-hvm"),
     ("VMware, Inc.", "VMware Virtual Platform", "vmware"),
     ("Microsoft Corporation", "Virtual Machine", "hyperv"), ("Dell Inc.", "PowerEdge R640", None)],
)  # fmt: skip
def test_dmi_answers_when_virt_what_is_missing(tmp_path, vendor, product, channel):
    (tmp_path / "sys_vendor").write_text(vendor + "\n")
    (tmp_path / "product_name").write_text(product + "\n")
    assert channels.detect_hypervisor(Recorded({}), str(tmp_path), str(tmp_path / "no-xen")) == channel


def test_dmi_that_names_a_hypervisor_spares_the_slow_virt_what(tmp_path):
    (tmp_path / "sys_vendor").write_text("QEMU\n")
    run = Recorded({("virt-what",): "xen\nxen-hvm\n"})
    assert channels.detect_hypervisor(run, str(tmp_path), str(tmp_path / "no-xen")) == "kvm"
    assert run.calls == []
    # a host that writes its own SMBIOS strings: virt-what decides
    (tmp_path / "sys_vendor").write_text("Apache Software Foundation\n")
    assert channels.detect_hypervisor(run, str(tmp_path), str(tmp_path / "no-xen")) == "xen-hvm"
    assert run.calls == [["virt-what"]]


def test_xen_pv_has_no_dmi_but_proc_xen(tmp_path):
    (tmp_path / "xen").mkdir()
    assert channels.hypervisor_from_dmi(str(tmp_path / "no-dmi"), str(tmp_path / "xen")) == "xen-pv"


def test_xenstore_percent_stands_for_space():
    run = Recorded({("xenstore-read", contract.XENSTORE_KEY): contract.xenstore_value(CMDLINE) + "\n"})
    assert channels.read_xenstore_cmdline(run) == CMDLINE


def test_proc_cmdline_for_xen_pv(tmp_path):
    proc = tmp_path / "cmdline"
    proc.write_text(f"root=/dev/xvda1 ro console=hvc0 {CMDLINE}\n")
    params = contract.parse_cmdline(channels.read_proc_cmdline(str(proc)))
    assert params["type"] == "secstorage" and params["root"] == "/dev/xvda1"


def test_vmware_machine_id():
    run = Recorded({("vmtoolsd", "--cmd", "machine.id.get"): CMDLINE + "\n"})
    assert channels.read_vmware_cmdline(run) == CMDLINE


def test_hyperv_kvp_pool(tmp_path):
    pool = tmp_path / ".kvp_pool_0"
    pool.write_bytes(kvp_record("OtherKey", "x") + kvp_record("cmdline", CMDLINE))
    assert channels.parse_kvp_pool(pool.read_bytes()) == {"OtherKey": "x", "cmdline": CMDLINE}
    assert channels.read_hyperv_cmdline(str(pool)) == CMDLINE
    # a pool without the cmdline key: the value that looks like one
    pool.write_bytes(kvp_record("Something", CMDLINE) + b"\0" * 100)  # a torn trailing record is ignored
    assert channels.read_hyperv_cmdline(str(pool)) == CMDLINE
    pool.write_bytes(kvp_record("OtherKey", "x"))
    with pytest.raises(ValueError, match="OtherKey"):
        channels.read_hyperv_cmdline(str(pool))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_kvm_waits_for_the_file_the_host_writes(tmp_path):
    path = tmp_path / "cmdline"
    clock = FakeClock()
    writes = {2.0: "type=secstorage name=", 2.5: CMDLINE + "\n"}  # the host writes in two chunks

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now in writes:
            path.write_text(writes[clock.now])

    assert channels.wait_for_cmdline_file(str(path), 60, 0, clock, sleep) == CMDLINE
    assert 2.5 < clock.now < 4


def test_kvm_wait_is_bounded_and_ignores_a_file_from_an_earlier_boot(tmp_path):
    path = tmp_path / "cmdline"
    path.write_text(CMDLINE)
    os.utime(path, (1000, 1000))
    clock = FakeClock()
    assert channels.wait_for_cmdline_file(str(path), 60, 2000, clock, clock.sleep) is None
    assert 60 <= clock.now <= 61


# The parts of Debian 12's sshd_config that matter here: the drop-in directory, the commented examples.
DEBIAN_SSHD_CONFIG = """Include /etc/ssh/sshd_config.d/*.conf

#Port 22
#AddressFamily any
#ListenAddress 0.0.0.0
#ListenAddress ::

PermitRootLogin prohibit-password

# Example of overriding settings on a per-user basis
#Match User anoncvs
#\tX11Forwarding no
"""


def listen_addresses(root: Path) -> list[str]:
    """The active ListenAddress values of the root's sshd_config."""
    text = (root / "etc/ssh/sshd_config").read_text()
    return [line.split()[1] for line in text.splitlines() if line.startswith("ListenAddress ")]


def make_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for d in ("etc/ssh/sshd_config.d", "var/cache/cloud", "var/log", "proc", "sys/class/net/eth0", "mnt"):
        (root / d).mkdir(parents=True)
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 systemvm\n")
    (root / "etc/ssh/sshd_config").write_text(DEBIAN_SSHD_CONFIG)
    (root / "proc/stat").write_text("cpu 1 2 3\nbtime 1700000000\n")
    (root / "proc/cmdline").write_text("root=LABEL=cloudrootfs ro console=ttyS0\n")
    (root / "proc/sys/net/ipv4").mkdir(parents=True)
    (root / "proc/sys/net/ipv4/ip_nonlocal_bind").write_text("0\n")
    (root / "etc/rc2.d").mkdir(parents=True)
    (root / "etc/rc2.d/S01xl2tpd").symlink_to("../init.d/xl2tpd")  # a SysV script still started at boot
    return root


SHOW = ("systemctl", "show", "-p", "LoadState", "-p", "UnitFileState")
NO_SYSV = ["env", "SYSTEMCTL_SKIP_SYSV=1", "systemctl"]


class UnitRunner(Recorded):
    """Recorded outputs; `systemctl show` answered from unit states, one block per unit as systemd does."""

    def __init__(self, outputs: dict[tuple[str, ...], str], states: dict[str, str]) -> None:
        super().__init__(outputs)
        self.states = states

    def __call__(self, argv: list[str]) -> str:
        if tuple(argv[: len(SHOW)]) != SHOW:
            return super().__call__(argv)
        self.calls.append(argv)
        blocks = []
        for unit in argv[len(SHOW) :]:
            state = self.states.get(unit.removesuffix(".service"), "not-found")
            load = state if state in ("not-found", "masked") else "loaded"
            unit_file = "" if state in ("not-found", "masked") else state
            blocks.append(f"LoadState={load}\nUnitFileState={unit_file}\n")
        return "\n".join(blocks)


def guest_runner(virt_what: str, **more: str) -> UnitRunner:
    states = {s: "disabled" for s in contract.ROLE_SERVICE_POOL}
    states.update({"nfs-common": "masked", "frr": "not-found", "haproxy": "enabled", "xl2tpd": "generated"})
    outputs = {("virt-what",): virt_what, ("systemctl",): "", tuple(NO_SYSV): ""}
    outputs.update({("iptables-restore",): "", ("ip6tables-restore",): ""})
    outputs[("/lib/systemd/systemd-sysv-install",)] = ""
    return UnitRunner(outputs, states)


def unit_calls(run: Recorded, argv: list[str]) -> set[str]:
    """The units named in every call that starts with ``argv``."""
    return {u.removesuffix(".service") for c in run.calls if c[: len(argv)] == argv for u in c[len(argv) :]}


def test_early_config_from_mnt_cmdline_override(tmp_path):
    root = make_root(tmp_path)
    (root / "mnt/cmdline").write_text(CMDLINE + " gateway=10.9.9.9 mtu=oops\n")
    run = guest_runner(VIRT_WHAT["kvm"])
    clock = FakeClock()
    config = early_config.early_config(Guest(root, run, clock, clock.sleep, echo=False))

    assert clock.now < 1, "an override must not wait for the guest agent"
    assert (root / "var/cache/cloud/cmdline").read_text().startswith("template=domP type=secstorage")
    assert (root / "etc/hostname").read_text() == "s-1-VM\n"
    assert "127.0.1.1\ts-1-VM" in (root / "etc/hosts").read_text().splitlines()
    keys = root / "root/.ssh/authorized_keys"
    assert keys.read_text() == KEY + "\n"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "root/.ssh").stat().st_mode) == 0o700
    interfaces = (root / "etc/network/interfaces").read_text()
    assert (
        "auto eth0\niface eth0 inet static\n    address 169.254.10.20\n    netmask 255.255.0.0" in interfaces
    )
    assert "gateway" not in interfaces  # 10.9.9.9 is on none of the NICs: logged, skipped
    assert listen_addresses(root) == ["169.254.10.20:3922"]
    sshd_config = (root / "etc/ssh/sshd_config").read_text()
    assert sshd_config.index("ListenAddress 169.254.10.20:3922") < sshd_config.index("PermitRootLogin")
    # sshd starts even when eth0 comes late
    assert (root / "proc/sys/net/ipv4/ip_nonlocal_bind").read_text() == "1\n"
    rules = (root / "etc/iptables/rules.v4").read_text()
    assert "-A INPUT -i eth0 -p tcp -m state --state NEW -m tcp --dport 3922 -j ACCEPT" in rules
    assert (root / "var/cache/cloud/enabled_svcs").read_text().split() == ["apache2", "nfs-common", "cloud"]
    assert "haproxy" in (root / "var/cache/cloud/disabled_svcs").read_text().split()
    assert ["systemctl", "start", "--no-block", "ssh.service"] in run.calls
    assert not [c for c in run.calls if "enable" in c]  # the services are postinit's
    # postinit applies them: enable the role's, skip the masked one, disable the enabled foreign one; in
    # batches (one systemctl call per verb), without the SysV sync and the reload that cost ~10 s each
    postinit.postinit(Guest(root, run, clock, clock.sleep, echo=False))
    assert (root / "var/cache/cloud/boot_up_done").exists()
    enable = [*NO_SYSV, "enable", "--no-reload", "--now", "--no-block"]
    assert [*enable, "apache2.service", "cloud.service"] in run.calls
    assert unit_calls(run, [*NO_SYSV, "disable", "--no-reload"]) == {"haproxy"}
    stopped = unit_calls(run, ["systemctl", "stop", "--no-block"])
    assert (
        {"haproxy", "xl2tpd", "dnsmasq"} <= stopped and "nfs-common" not in stopped and "frr" not in stopped
    )
    assert len([c for c in run.calls if c[: len(SHOW)] == list(SHOW)]) == 1
    # a SysV script's generated unit: disabled through its rc links, stopped
    assert ["/lib/systemd/systemd-sysv-install", "disable", "xl2tpd"] in run.calls
    assert ["systemctl", "start", "--no-block", "ssh.service"] in run.calls
    assert ["iptables-restore", str(root / "etc/iptables/rules.v4")] in run.calls
    log = (root / "var/log/cloud.log").read_text()
    assert "mtu='oops' skipped" in log and "gateway 10.9.9.9 is on none" in log
    assert config.role == "secstorage"


def test_early_config_router_on_xen_hvm_with_missing_nic(tmp_path):
    root = make_root(tmp_path)
    cmdline = contract.BootArgs(
        role="router", name="r-4-VM", nics=[("10.1.1.1", "255.255.255.0"), ("169.254.4.4", "255.255.0.0")],
        authorized_key=KEY, gateway="10.1.1.254", dns=("10.1.1.53",),
    ).to_cmdline()  # fmt: skip
    run = guest_runner(VIRT_WHAT["xen-hvm"])
    run.outputs = {("xenstore-read",): contract.xenstore_value(cmdline), **run.outputs}
    clock = FakeClock()
    early_config.early_config(Guest(root, run, clock, clock.sleep, echo=False))

    assert (root / "var/cache/cloud/cmdline").read_text().strip() == cmdline
    interfaces = (root / "etc/network/interfaces").read_text()
    assert "auto eth0" in interfaces and "    gateway 10.1.1.254" in interfaces
    assert "allow-hotplug eth1" in interfaces  # not present in /sys: hotplug, never a failed networking
    assert 15 <= clock.now < 17  # waited for the NIC, with a bound
    assert (root / "etc/resolv.conf").read_text() == "nameserver 10.1.1.53\n"
    assert listen_addresses(root) == ["169.254.4.4:3922"]
    rules = (root / "etc/iptables/rules.v4").read_text()
    assert "-A INPUT -i eth1 -p tcp -m tcp -m state --state NEW,ESTABLISHED --dport 3922 -j ACCEPT" in rules
    assert "-A INPUT -i eth0 -p udp -m udp --dport 67 -j ACCEPT" in rules
    assert "-A INPUT -i eth0 -p udp -m udp --dport 53 -s 10.1.1.1/24 -j ACCEPT" in rules
    dnsmasq_conf = (root / "etc/dnsmasq.conf").read_text().splitlines()
    assert (
        "dhcp-range=10.1.1.1,static" in dnsmasq_conf and "dhcp-option=option:router,10.1.1.1" in dnsmasq_conf
    )
    assert "10.1.1.1 data-server" in (root / "etc/hosts").read_text().splitlines()
    postinit.postinit(Guest(root, run, clock, clock.sleep, echo=False))
    assert "haproxy" in unit_calls(run, [*NO_SYSV, "enable", "--no-reload", "--now", "--no-block"])


def test_early_config_without_any_command_line_is_not_fatal(tmp_path):
    root = make_root(tmp_path)
    run = guest_runner("")  # virt-what finds nothing; no DMI either
    clock = FakeClock()
    config = early_config.early_config(Guest(root, run, clock, clock.sleep, echo=False))
    assert config.role is None
    assert 60 <= clock.now < 62  # the bounded KVM wait, then /proc/cmdline
    assert not (root / "etc/network/interfaces").exists()
    assert listen_addresses(root) == []
    assert (root / "var/cache/cloud/enabled_svcs").read_text() == ""
    assert ["systemctl", "start", "--no-block", "ssh.service"] in run.calls
    assert "no authorized_key" in (root / "var/log/cloud.log").read_text()


def test_a_failing_step_does_not_stop_the_others(tmp_path):
    root = make_root(tmp_path)
    (root / "mnt/cmdline").write_text(CMDLINE)
    run = guest_runner(VIRT_WHAT["kvm"])
    del run.outputs[("iptables-restore",)]  # the firewall step fails

    early_config.early_config(Guest(root, run, echo=False))
    assert ["systemctl", "start", "--no-block", "ssh.service"] in run.calls
    assert "apply_firewall failed" in (root / "var/log/cloud.log").read_text()


def test_authorized_key_decoding_roundtrip():
    assert contract.decode_authorized_key(base64.b64encode(KEY.encode()).decode()) == KEY


def test_one_failing_service_does_not_stop_the_rest(tmp_path):
    root = make_root(tmp_path)
    (root / "mnt/cmdline").write_text(CMDLINE)
    run = guest_runner(VIRT_WHAT["kvm"])

    run.states["keepalived"] = "enabled"

    def runner(argv: list[str]) -> str:
        if argv[:4] == [*NO_SYSV, "disable"] and "haproxy.service" in argv:
            run.calls.append(argv)
            raise subprocess.CalledProcessError(1, argv)
        return run(argv)

    early_config.early_config(Guest(root, runner, echo=False))
    postinit.postinit(Guest(root, runner, echo=False))
    # the batch failed, so each unit was tried alone: keepalived still got disabled
    assert [*NO_SYSV, "disable", "--no-reload", "keepalived.service"] in run.calls
    assert [
        *NO_SYSV,
        "enable",
        "--no-reload",
        "--now",
        "--no-block",
        "apache2.service",
        "cloud.service",
    ] in run.calls
    assert "xl2tpd" in unit_calls(run, ["systemctl", "stop", "--no-block"])
    log = (root / "var/log/cloud.log").read_text()
    assert "disabling haproxy failed" in log and "disabling keepalived failed" not in log


def test_ssh_listens_everywhere_when_non_local_binds_cannot_be_allowed(tmp_path):
    root = make_root(tmp_path)
    (root / "proc/sys/net/ipv4/ip_nonlocal_bind").unlink()
    (root / "proc/sys/net/ipv4").rmdir()
    (root / "mnt/cmdline").write_text(CMDLINE)
    early_config.early_config(Guest(root, guest_runner(VIRT_WHAT["kvm"]), echo=False))
    assert listen_addresses(root) == []
    rules = (root / "etc/iptables/rules.v4").read_text()
    assert (
        "-i eth0 -p tcp -m state --state NEW -m tcp --dport 3922 -j ACCEPT" in rules
    )  # only the control NIC


def test_hyperv_waits_for_the_kvp_daemon_to_fill_the_pool(tmp_path):
    root = make_root(tmp_path)
    pool = root / channels.HYPERV_KVP_POOL.lstrip("/")
    pool.parent.mkdir(parents=True)
    run = guest_runner(VIRT_WHAT["hyperv"])
    clock = FakeClock()

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now >= 5 and not pool.exists():
            pool.write_bytes(kvp_record("cmdline", CMDLINE))

    config = early_config.early_config(Guest(root, run, clock, sleep, echo=False))
    assert ["systemctl", "start", "--no-block", "hv-kvp-daemon.service"] in run.calls
    assert config.role == "secstorage" and config.hypervisor == "hyperv"
    assert config.control_nic == "eth1"  # no link-local network on Hyper-V
    assert (root / "var/cache/cloud/cmdline").read_text().strip() == CMDLINE


def test_early_config_writes_the_state_cloudstacks_scripts_read(tmp_path):
    root = make_root(tmp_path)
    (root / "sys/class/net/eth1").mkdir()
    cmdline = contract.BootArgs(
        role="secstorage", name="s-1-VM",
        nics=[("169.254.10.20", "255.255.0.0"), ("10.1.1.50", "255.255.255.0")],
        authorized_key=KEY, mgmt_host="10.1.1.10,10.1.1.11", dns=("8.8.8.8",),
        extra={"internaldns1": "10.1.1.2", "mgmtcidr": "10.8.0.0/16", "localgw": "10.1.1.1", "zone": "1"},
    ).to_cmdline()  # fmt: skip
    (root / "mnt/cmdline").write_text(cmdline + "\n")
    run = guest_runner(VIRT_WHAT["kvm"])
    clock = FakeClock()
    early_config.early_config(Guest(root, run, clock, clock.sleep, echo=False))

    document = json.loads((root / "var/cache/cloud/cmd_line.json").read_text())
    assert document == {"type": "cmdline", "cmd_line": contract.parse_cmdline(cmdline)}
    assert list(document["cmd_line"]) == [w.partition("=")[0] for w in cmdline.split()]
    assert (root / "etc/cloudstack").is_dir()
    assert (root / "etc/resolv.conf").read_text() == "nameserver 10.1.1.2\nnameserver 8.8.8.8\n"
    interfaces = (root / "etc/network/interfaces").read_text()
    eth1 = interfaces.split("iface eth1", 1)[1]
    assert "    post-up ip route replace 10.8.0.0/16 via 10.1.1.1 dev eth1" in eth1
    assert "ip route" not in interfaces.split("iface eth1", 1)[0]
    # not a router: no forwarding
    assert (root / "proc/sys/net/ipv4/ip_forward").read_text() == "0\n"
    assert "net.ipv4.ip_forward = 0" in (root / "etc/sysctl.d/60-cloud-role.conf").read_text()
    assert (root / "var/cache/cloud/enabled_svcs").read_text().split() == ["apache2", "nfs-common", "cloud"]
    assert (
        "management network 10.8.0.0/16 routed via 10.1.1.1 on eth1"
        in (root / "var/log/cloud.log").read_text()
    )


def test_routers_forward_and_a_stray_localgw_is_logged(tmp_path):
    root = make_root(tmp_path)
    cmdline = contract.BootArgs(
        role="router", name="r-4-VM", nics=[("10.1.1.1", "255.255.255.0"), ("169.254.4.4", "255.255.0.0")],
        authorized_key=KEY, extra={"mgmtcidr": "10.8.0.0/16", "localgw": "192.0.2.1"},
    ).to_cmdline()  # fmt: skip
    (root / "mnt/cmdline").write_text(cmdline)
    clock = FakeClock()
    early_config.early_config(Guest(root, guest_runner(VIRT_WHAT["kvm"]), clock, clock.sleep, echo=False))
    assert (root / "proc/sys/net/ipv4/ip_forward").read_text() == "1\n"
    assert "net.ipv4.ip_forward = 1" in (root / "etc/sysctl.d/60-cloud-role.conf").read_text()
    assert "ip route" not in (root / "etc/network/interfaces").read_text()
    log = (root / "var/log/cloud.log").read_text()
    assert "mgmtcidr 10.8.0.0/16 not routed: localgw 192.0.2.1 is on none" in log
    assert json.loads((root / "var/cache/cloud/cmd_line.json").read_text())["cmd_line"]["type"] == "router"


def test_no_cmd_line_json_for_an_unknown_type(tmp_path):
    root = make_root(tmp_path)
    (root / "var/cache/cloud/cmd_line.json").write_text('{"type": "cmdline", "cmd_line": {}}')  # a stale one
    (root / "mnt/cmdline").write_text(CMDLINE.replace("type=secstorage", "type=fileserver"))
    config = early_config.early_config(Guest(root, guest_runner(VIRT_WHAT["kvm"]), echo=False))
    assert config.role is None
    assert not (root / "var/cache/cloud/cmd_line.json").exists()
    assert (root / "etc/cloudstack").is_dir()
    log = (root / "var/log/cloud.log").read_text()
    assert "type='fileserver' skipped" in log and "cmd_line.json not written" in log


def test_a_command_line_written_after_the_wait_still_configures_the_vm(tmp_path):
    root = make_root(tmp_path)
    run = guest_runner(VIRT_WHAT["kvm"])
    clock = FakeClock()
    config = early_config.early_config(Guest(root, run, clock, clock.sleep, echo=False))
    assert config.role is None and 60 <= clock.now < 62  # the host was too slow: /proc/cmdline
    assert ["systemctl", "start", "--no-block", contract.CMDLINE_WATCH_UNIT] in run.calls
    assert not (root / "var/cache/cloud/cmd_line.json").exists()

    # minutes later the host writes the command line through the guest agent; the path unit starts
    # cloud-late-config.service, which runs this
    late = contract.BootArgs(
        role="secstorage", name="s-5-VM", nics=[("169.254.7.7", "255.255.0.0")], authorized_key=KEY
    ).to_cmdline()
    (root / "var/cache/cloud/cmdline").write_text(late + "\n")
    run = guest_runner(VIRT_WHAT["kvm"])
    run.outputs.update({("ip",): "", ("ifup",): ""})
    clock = FakeClock()
    config = early_config.late_config(Guest(root, run, clock, clock.sleep, echo=False))
    assert config is not None and config.role == "secstorage" and clock.now < 5
    assert (root / "etc/hostname").read_text() == "s-5-VM\n"
    assert "address 169.254.7.7" in (root / "etc/network/interfaces").read_text()
    assert listen_addresses(root) == ["169.254.7.7:3922"]
    assert (root / "root/.ssh/authorized_keys").read_text() == KEY + "\n"
    assert json.loads((root / "var/cache/cloud/cmd_line.json").read_text())["cmd_line"]["name"] == "s-5-VM"
    # the boot's ifup is long over: the NIC gets its address now, then sshd and postinit run again
    assert run.calls.index(["ip", "addr", "flush", "dev", "eth0"]) < run.calls.index(
        ["ifup", "--force", "eth0"]
    )
    # postinit first: ssh's job then waits for it, and SSH answers on a VM whose boot is done
    assert run.calls.index(
        ["systemctl", "restart", "--no-block", early_config.POSTINIT_UNIT]
    ) < run.calls.index(["systemctl", "restart", "--no-block", "ssh.service"])
    # the boot's sshd never sees the new key: it stops before the key is written (a host that logged in
    # on it would be cut off by the restart)
    steps = early_config.STEPS
    hold, install = early_config.hold_ssh_for_late_config, early_config.install_authorized_key
    assert steps.index(hold) < steps.index(install)
    assert run.calls.index(["systemctl", "stop", "ssh.service"]) < run.calls.index(
        ["systemctl", "restart", "--no-block", "ssh.service"]
    )
    assert ["systemctl", "start", "--no-block", "ssh.service"] not in run.calls
    assert (root / contract.APPLIED_CMDLINE_PATH.lstrip("/")).read_text() == late + "\n"

    # the host retries the same write: nothing is done again
    run = guest_runner(VIRT_WHAT["kvm"])
    assert early_config.late_config(Guest(root, run, clock, clock.sleep, echo=False)) is None
    assert not [c for c in run.calls if c[0] in ("ip", "ifup")]
    assert "nothing to do" in (root / "var/log/cloud.log").read_text()


def test_a_command_line_that_arrived_in_time_needs_no_listener(tmp_path):
    root = make_root(tmp_path)
    path = root / "var/cache/cloud/cmdline"
    path.write_text(CMDLINE + "\n")
    os.utime(path, (1700000100, 1700000100))  # written during this boot (btime 1700000000)
    run = guest_runner(VIRT_WHAT["kvm"])
    clock = FakeClock()
    config = early_config.early_config(Guest(root, run, clock, clock.sleep, echo=False))
    assert config.role == "secstorage" and clock.now < 2
    assert not [c for c in run.calls if contract.CMDLINE_WATCH_UNIT in c]


def test_the_watch_units_run_the_late_configuration():
    units = REPO / "elements/systemvm-boot/static/etc/systemd/system"
    watch = (units / contract.CMDLINE_WATCH_UNIT).read_text()
    assert f"PathChanged={contract.CMDLINE_PATH}" in watch and "Unit=cloud-late-config.service" in watch
    assert "[Install]" not in watch  # started by cloud-early-config only when the wait ran out
    service = (units / "cloud-late-config.service").read_text()
    assert "ExecStart=/opt/cloud/bin/cloud-early-config --late" in service


# --- the optional keys of CloudStack 4.20 applied by the early configuration ----------------------------


class Fed:
    """Records what the early configuration writes to a command's stdin (chpasswd)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str]] = []

    def __call__(self, argv: list[str], stdin: str) -> str:
        self.calls.append((argv, stdin))
        return ""


def sysctl_dirs(root: Path, *nics: str) -> None:
    for d in ("ipv4/conf/default", "ipv4/conf/lo", "ipv6/conf/all", "ipv6/conf/default"):
        (root / "proc/sys/net" / d).mkdir(parents=True, exist_ok=True)
    for nic in nics:
        (root / f"proc/sys/net/ipv4/conf/{nic}").mkdir(parents=True, exist_ok=True)
        (root / f"proc/sys/net/ipv6/conf/{nic}").mkdir(parents=True, exist_ok=True)
        (root / f"sys/class/net/{nic}").mkdir(parents=True, exist_ok=True)


ROUTER_KEYS = contract.BootArgs(
    role="router", name="r-4-VM", nics=[("10.1.1.1", "255.255.255.0"), ("169.254.4.4", "255.255.0.0"),
                                        ("203.0.113.30", "255.255.255.0")],
    authorized_key=KEY, gateway="203.0.113.1", dns=("8.8.8.8",),
    extra={"internaldns1": "10.1.1.53", "eth0ip6": "fd00:a01:101::1", "eth0ip6prelen": "64",
           "ip6gateway": "fd00:a01:101::2", "ip6dns1": "2001:db8::53", "disable_rp_filter": "true",
           "ntpserverlist": "10.0.0.5,ntp.example.org", "vmpassword": "Root-Pass-42"},
).to_cmdline()  # fmt: skip


def boot(
    root: Path, cmdline: str, run: Recorded | None = None, feed: Fed | None = None
) -> contract.BootConfig:
    (root / "mnt/cmdline").write_text(cmdline + "\n")
    clock = FakeClock()
    guest = Guest(
        root, run or guest_runner(VIRT_WHAT["kvm"]), clock, clock.sleep, echo=False, feed=feed or Fed()
    )
    return early_config.early_config(guest)


def test_ipv6_rp_filter_ntp_and_password_on_a_router(tmp_path):
    root = make_root(tmp_path)
    sysctl_dirs(root, "eth0", "eth1", "eth2")
    run, fed = guest_runner(VIRT_WHAT["kvm"]), Fed()
    boot(root, ROUTER_KEYS, run, fed)

    interfaces = (root / "etc/network/interfaces").read_text()
    eth0 = interfaces.split("auto eth0\n", 1)[1].split("\n\n", 1)[0]
    assert eth0.splitlines() == [
        "iface eth0 inet static", "    address 10.1.1.1", "    netmask 255.255.255.0",
        "iface eth0 inet6 static", "    address fd00:a01:101::1", "    netmask 64", "    accept_ra 1",
        "    gateway fd00:a01:101::2",
    ]  # fmt: skip
    assert "    gateway 203.0.113.1" in interfaces.split("auto eth2", 1)[1]
    # IPv4 resolvers first (the zone's internal one leading), then the IPv6 one
    assert (root / "etc/resolv.conf").read_text().split() == [
        "nameserver", "10.1.1.53", "nameserver", "8.8.8.8", "nameserver", "2001:db8::53"]  # fmt: skip
    # rp_filter: off by default and on the public NIC, on for guest, control and loopback
    proc = root / "proc/sys/net"
    assert (proc / "ipv4/conf/default/rp_filter").read_text() == "0\n"
    assert (proc / "ipv4/conf/eth2/rp_filter").read_text() == "0\n"
    assert all((proc / f"ipv4/conf/{nic}/rp_filter").read_text() == "1\n" for nic in ("eth0", "eth1", "lo"))
    assert (proc / "ipv6/conf/all/disable_ipv6").read_text() == "0\n"
    assert (proc / "ipv6/conf/eth0/disable_ipv6").read_text() == "0\n"
    saved = (root / "etc/sysctl.d/60-cloud-role.conf").read_text()
    assert "net.ipv4.conf.default.rp_filter = 0" in saved and "net.ipv6.conf.all.disable_ipv6 = 0" in saved
    # NTP: a timesyncd drop-in, re-read by a running daemon
    dropin = (root / contract.TIMESYNCD_DROPIN.lstrip("/")).read_text()
    assert "NTP=10.0.0.5 ntp.example.org" in dropin.splitlines()
    assert ["systemctl", "try-restart", "--no-block", "systemd-timesyncd.service"] in run.calls
    # vmpassword: to chpasswd's stdin only, never an argument or a log line
    assert fed.calls == [(["chpasswd"], "root:Root-Pass-42\n")]
    assert not any("Root-Pass-42" in " ".join(call) for call in run.calls)
    assert "Root-Pass-42" not in (root / "var/log/cloud.log").read_text()
    assert "root password set from vmpassword" in (root / "var/log/cloud.log").read_text()
    # cmd_line.json keeps every key as CloudStack's does, readable by root only
    document = root / "var/cache/cloud/cmd_line.json"
    assert json.loads(document.read_text())["cmd_line"]["vmpassword"] == "Root-Pass-42"
    assert stat.S_IMODE(document.stat().st_mode) == 0o600
    for path in ("var/cache/cloud/cmdline", contract.APPLIED_CMDLINE_PATH.lstrip("/")):
        assert stat.S_IMODE((root / path).stat().st_mode) == 0o600


def test_without_the_optional_keys_nothing_of_them_is_written(tmp_path):
    root = make_root(tmp_path)
    dropin = root / contract.TIMESYNCD_DROPIN.lstrip("/")
    dropin.parent.mkdir(parents=True)
    dropin.write_text("[Time]\nNTP=stale.example\n")  # from an earlier boot's command line
    run, fed = guest_runner(VIRT_WHAT["kvm"]), Fed()
    boot(root, CMDLINE, run, fed)
    assert fed.calls == [] and not dropin.exists()
    assert "inet6" not in (root / "etc/network/interfaces").read_text()
    saved = (root / "etc/sysctl.d/60-cloud-role.conf").read_text()
    assert "ipv6" not in saved and "net.ipv4.conf.default.rp_filter = 0" in saved  # secstorage: off


def test_a_malformed_vmpassword_is_reported_without_its_value(tmp_path):
    root = make_root(tmp_path)
    fed = Fed()
    boot(root, CMDLINE + " vmpassword=Bad\x01Pass", feed=fed)
    log = (root / "var/log/cloud.log").read_text()
    assert "vmpassword=<hidden> skipped" in log and "Bad" not in log and fed.calls == []


def test_storage_nic_and_dhcp_nics_in_the_interfaces_file(tmp_path):
    root = make_root(tmp_path)
    for nic in ("eth1", "eth2", "eth3"):
        (root / f"sys/class/net/{nic}").mkdir()
    cmdline = contract.BootArgs(
        role="secstorage", name="s-1-VM",
        nics=[("169.254.10.20", "255.255.0.0"), ("10.1.1.50", "255.255.255.0"),
              ("203.0.113.20", "255.255.255.0"), ("0.0.0.0", "0.0.0.0")],
        authorized_key=KEY,
        extra={"storageip": "172.16.5.20", "storagenetmask": "255.255.255.0", "storagegateway": "172.16.5.1",
               "mtu": "9000", "bootproto": "dhcp", "internaldns1": "10.1.1.2"},
    ).to_cmdline()  # fmt: skip
    boot(root, cmdline)
    stanzas = {block.splitlines()[0]: block.splitlines()[1:] for block in
               (root / "etc/network/interfaces").read_text().split("\n\n")[1:]}  # fmt: skip
    # eth0 stays static; with bootproto=dhcp the other NICs ask DHCP (the storage NIC too, as common.sh does)
    assert stanzas["auto eth0"][:3] == [
        "iface eth0 inet static",
        "    address 169.254.10.20",
        "    netmask 255.255.0.0",
    ]
    assert stanzas["auto eth1"] == ["iface eth1 inet dhcp", "    pre-up ip link set dev eth1 mtu 9000"]
    assert stanzas["auto eth3"] == ["iface eth3 inet dhcp", "    pre-up ip link set dev eth3 mtu 9000"]
    # without bootproto=dhcp the storage NIC gets its address and the MTU; nothing routed via storagegateway
    root = make_root(tmp_path / "static")
    (root / "sys/class/net/eth3").mkdir()
    boot(root, cmdline.replace(" bootproto=dhcp", ""))
    interfaces = (root / "etc/network/interfaces").read_text()
    eth3 = interfaces.split("auto eth3\n", 1)[1].splitlines()
    assert eth3 == [
        "iface eth3 inet static",
        "    address 172.16.5.20",
        "    netmask 255.255.255.0",
        "    mtu 9000",
    ]
    assert "172.16.5.1" not in interfaces
    assert "storage network 172.16.5.0/24 on eth3" in (root / "var/log/cloud.log").read_text()


@pytest.mark.parametrize(
    ("current", "wanted", "renames"),
    [
        ({"eth0": "aa:00:00:00:00:01", "eth1": "aa:00:00:00:00:02"},
         ["aa:00:00:00:00:01", "aa:00:00:00:00:02"], []),
        (
            {"eth0": "aa:00:00:00:00:02", "eth1": "aa:00:00:00:00:01"},
            ["aa:00:00:00:00:01", "aa:00:00:00:00:02"],
            [("eth0", "cloudtmp0"), ("eth1", "cloudtmp1"), ("cloudtmp0", "eth1"), ("cloudtmp1", "eth0")],
        ),
        # eth0's MAC is not listed, but its name is wanted: it moves to a name nobody wants
        (
            {"eth0": "aa:00:00:00:00:09", "eth1": "aa:00:00:00:00:01"},
            ["aa:00:00:00:00:01"],
            [("eth1", "cloudtmp0"), ("eth0", "eth2"), ("cloudtmp0", "eth0")],
        ),
        ({"eth0": "aa:00:00:00:00:01"}, ["aa:00:00:00:00:05", "aa:00:00:00:00:01"],
         [("eth0", "cloudtmp0"), ("cloudtmp0", "eth1")]),
    ],
)  # fmt: skip
def test_nic_renames_give_ethn_the_nth_mac(current, wanted, renames):
    assert early_config.nic_renames(current, wanted) == renames
    names = dict(current)
    for old, new in renames:  # applied in order, no rename ever takes a name in use
        assert new not in names
        names[new] = names.pop(old)
    assert all(names.get(f"eth{i}") == mac for i, mac in enumerate(wanted) if mac in current.values())


def test_nic_macs_rename_the_nics_before_the_network_is_configured(tmp_path):
    root = make_root(tmp_path)
    (root / "sys/class/net/eth1").mkdir()
    (root / "sys/class/net/eth0/address").write_text("52:54:00:00:00:02\n")
    (root / "sys/class/net/eth1/address").write_text("52:54:00:00:00:01\n")
    run = guest_runner(VIRT_WHAT["kvm"])
    run.outputs[("ip", "link")] = ""
    boot(root, CMDLINE + " nic_macs=52:54:00:00:00:01|52:54:00:00:00:02", run)
    renames = [c[4:] for c in run.calls if c[:3] == ["ip", "link", "set"]]
    assert renames == [["eth0", "name", "cloudtmp0"], ["eth1", "name", "cloudtmp1"],
                       ["cloudtmp0", "name", "eth1"], ["cloudtmp1", "name", "eth0"]]  # fmt: skip
    assert early_config.STEPS.index(early_config.order_nics_by_mac) < early_config.STEPS.index(
        early_config.configure_network
    )


@pytest.mark.parametrize(
    ("role", "extra", "control", "ip"),
    [("ilbvm", {}, "eth1", "169.254.4.4"), ("elbvm", {}, "eth1", "169.254.4.4"),
     ("elbvm", {"sshonguest": "true"}, "eth0", "10.3.0.50")],
)  # fmt: skip
def test_load_balancer_vms_run_haproxy_with_ssh_on_their_control_nic(tmp_path, role, extra, control, ip):
    root = make_root(tmp_path)
    (root / "sys/class/net/eth1").mkdir()
    cmdline = contract.BootArgs(
        role=role, name="b-9-VM", nics=[("10.3.0.50", "255.255.255.0"), ("169.254.4.4", "255.255.0.0")],
        authorized_key=KEY, gateway="10.3.0.1", dns=("10.3.0.1",), extra=extra,
    ).to_cmdline()  # fmt: skip
    run = guest_runner(VIRT_WHAT["kvm"])
    config = boot(root, cmdline, run)
    assert config.role == role and config.problems == []
    assert (root / "var/cache/cloud/enabled_svcs").read_text().split() == ["haproxy"]
    postinit.postinit(Guest(root, run, echo=False))
    assert "haproxy" in unit_calls(run, [*NO_SYSV, "enable", "--no-reload", "--now", "--no-block"])
    assert listen_addresses(root) == [f"{ip}:3922"]
    rules = (root / "etc/iptables/rules.v4").read_text()
    assert (
        f"-A INPUT -i {control} -p tcp -m tcp -m state --state NEW,ESTABLISHED --dport 3922 -j ACCEPT"
        in rules
    )
    assert (root / "proc/sys/net/ipv4/ip_forward").read_text() == "0\n"  # enable_fwding 0
