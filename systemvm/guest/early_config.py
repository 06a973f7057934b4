"""cloud-early-config: read the boot command line from the hypervisor and configure the system VM from it.

Runs once per boot before the network comes up (cloud-early-config.service). Every step is independent and
never fatal: a step that fails is logged to /var/log/cloud.log and the next one runs, so a bad value can
cost a feature but never the SSH access needed to look at it. The rules themselves (keys, roles, NICs,
ports) come from :mod:`systemvm.contract`, the module the harness uses.

Paths are resolved under ``Guest.root`` and commands go through ``Guest.run`` so the unit tests can run the
whole sequence on a temporary directory with recorded command outputs.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from systemvm import contract
from systemvm.guest import apache, channels, dnsmasq, firewall
from systemvm.guest.system import Guest

SSHD_CONFIG = "/etc/ssh/sshd_config"
# Where images before 0.2 bound sshd (a drop-in a patched sshd_config no longer reads): removed at boot.
OLD_SSH_LISTEN_CONF = "/etc/ssh/sshd_config.d/60-cloud-listen.conf"
LISTEN_LINE = re.compile(r"^\s*#?\s*ListenAddress\b", re.IGNORECASE)
POSTINIT_UNIT = "systemvm-postinit.service"
VNC_PORT_FILE = "/root/vncport"
NIC_WAIT = 15.0  # seconds to wait for the command line's NICs to appear before writing the config


def configure_hostname(guest: Guest, config: contract.BootConfig) -> None:
    if not config.name:
        return
    guest.write("/etc/hostname", config.name + "\n")
    hosts = guest.path("/etc/hosts")
    lines = hosts.read_text().splitlines() if hosts.exists() else ["127.0.0.1\tlocalhost"]
    lines = [line for line in lines if not line.startswith("127.0.1.1")]
    lines.insert(1, f"127.0.1.1\t{config.name}")
    guest.write("/etc/hosts", "\n".join(lines) + "\n")
    if guest.root == Path("/"):
        guest.run(["hostname", config.name])


def _holds(nic: contract.Nic, address: contract.ipaddress.IPv4Address) -> bool:
    """True when ``address`` is on the NIC's network (a NIC without an address holds none)."""
    return nic.interface is not None and address in nic.interface.network


def _gateway_nic(config: contract.BootConfig) -> int | None:
    """The NIC whose IPv4 network holds ``gateway`` (it carries the default route)."""
    if not config.gateway:
        return None
    gateway = contract.ipaddress.IPv4Address(config.gateway)
    return next((n.index for n in config.nics.values() if _holds(n, gateway)), None)


def _gateway6_nic(config: contract.BootConfig) -> int | None:
    """The NIC for the default IPv6 route: the one whose prefix holds ``ip6gateway``; a link-local
    gateway is on the IPv4 default NIC, or else on the first NIC with an IPv6 address."""
    if not config.gateway6:
        return None
    gateway = contract.ipaddress.IPv6Address(config.gateway6)
    v6 = sorted((n for n in config.nics.values() if n.interface6), key=lambda n: n.index)
    holder = next((n.index for n in v6 if n.interface6 and gateway in n.interface6.network), None)
    if holder is not None or not gateway.is_link_local or not v6:
        return holder
    default = _gateway_nic(config)
    return default if default in {n.index for n in v6} else v6[0].index


def _ipv4_stanza(
    config: contract.BootConfig,
    nic: contract.Nic,
    gateway_nic: int | None,
    route: tuple[str, str, str] | None,
) -> list[str]:
    if nic.dhcp:
        lines = [f"iface {nic.name} inet dhcp"]
        if nic.mtu:  # ifupdown's dhcp method has no mtu option
            lines.append(f"    pre-up ip link set dev {nic.name} mtu {nic.mtu}")
        return lines
    if nic.ip is None:
        return []
    lines = [f"iface {nic.name} inet static", f"    address {nic.ip}", f"    netmask {nic.netmask}"]
    if nic.mtu:
        lines.append(f"    mtu {nic.mtu}")
    if nic.index == gateway_nic:
        lines.append(f"    gateway {config.gateway}")
    if route and route[2] == nic.name:
        cidr, via, _ = route
        lines += [f"    post-up ip route replace {cidr} via {via} dev {nic.name}",
                  f"    pre-down ip route del {cidr} via {via} dev {nic.name} || true"]  # fmt: skip
    return lines


def _ipv6_stanza(config: contract.BootConfig, nic: contract.Nic, gateway6_nic: int | None) -> list[str]:
    """inet6 static with router advertisements accepted, as CloudStack's setup_interface_ipv6 writes it."""
    if nic.ip6 is None:
        return []
    lines = [f"iface {nic.name} inet6 static", f"    address {nic.ip6}", f"    netmask {nic.ip6_prefixlen}",
             "    accept_ra 1"]  # fmt: skip
    if nic.mtu and nic.ip is None and not nic.dhcp:  # the inet stanza carries it otherwise
        lines.append(f"    mtu {nic.mtu}")
    if nic.index == gateway6_nic:
        lines.append(f"    gateway {config.gateway6}")
    return lines


def interfaces_text(config: contract.BootConfig, present: set[str]) -> str:
    """/etc/network/interfaces for the command line's NICs (ifupdown brings them up after this unit).

    NICs that exist now are ``auto`` so network.target (and sshd after it) waits for their addresses; a NIC
    not there yet is ``allow-hotplug`` so its absence cannot fail networking.service.
    """
    out = ["# Written by cloud-early-config from the boot command line; rewritten every boot.",
           "auto lo", "iface lo inet loopback"]  # fmt: skip
    gateway_nic = _gateway_nic(config)
    gateway6_nic = _gateway6_nic(config)
    try:
        route = contract.management_route(config)
    except ValueError:
        route = None  # configure_network logs it
    for nic in sorted(config.nics.values(), key=lambda n: n.index):
        start = "auto" if nic.name in present else "allow-hotplug"
        out += ["", f"{start} {nic.name}"]
        out += _ipv4_stanza(config, nic, gateway_nic, route)
        out += _ipv6_stanza(config, nic, gateway6_nic)
    return "\n".join(out) + "\n"


def configure_network(guest: Guest, config: contract.BootConfig) -> None:
    if not config.nics:
        guest.log("no NIC addresses on the command line; network configuration left as it is")
        return
    if config.gateway and not any(
        _holds(n, contract.ipaddress.IPv4Address(config.gateway)) for n in config.nics.values()
    ):
        guest.log(f"gateway {config.gateway} is on none of the NICs' networks; skipped")
    if config.gateway6 and _gateway6_nic(config) is None:
        guest.log(f"ip6gateway {config.gateway6} is on none of the NICs' IPv6 networks; skipped")
    storage = config.nics.get(contract.STORAGE_NIC_INDEX)
    if "storageip" in config.params and storage and storage.interface:
        # CloudStack's setup script routes nothing via storagegateway (its route line is commented out):
        # the storage network is reached through the connected route of the NIC's own subnet.
        guest.log(f"storage network {storage.interface.network} on {storage.name}")
    try:
        route = contract.management_route(config)
        if route:
            guest.log(f"management network {route[0]} routed via {route[1]} on {route[2]}")
    except ValueError as exc:
        guest.log(f"mgmtcidr {config.mgmt_cidr} not routed: {exc}")
    wanted = {nic.name for nic in config.nics.values()}
    deadline = guest.clock() + NIC_WAIT
    while True:
        present = {name for name in wanted if guest.path(f"/sys/class/net/{name}").exists()}
        if present == wanted or guest.clock() >= deadline:
            break
        guest.sleep(0.5)
    for missing in sorted(wanted - present):
        guest.log(f"{missing} is not present; configured for hotplug")
    guest.write("/etc/network/interfaces", interfaces_text(config, present))
    if config.dns:
        guest.write("/etc/resolv.conf", "".join(f"nameserver {s}\n" for s in config.dns))


def write_cloudstack_state(guest: Guest, config: contract.BootConfig) -> None:
    """What CloudStack's own scripts read at boot: /etc/cloudstack/ and, for a known type,
    /var/cache/cloud/cmd_line.json (CloudStack keeps it only when the type is one it knows)."""
    guest.path(contract.CLOUDSTACK_CONF_DIR).mkdir(mode=0o755, parents=True, exist_ok=True)
    if not config.role:
        guest.path(contract.CMD_LINE_JSON_PATH).unlink(missing_ok=True)
        guest.log(f"no known type on the command line: {contract.CMD_LINE_JSON_PATH} not written")
        return
    text = json.dumps(contract.cmd_line_json(config.params), indent=2) + "\n"
    # Every key as CloudStack keeps it, vmpassword included: root's only (its readers run as root).
    guest.write(contract.CMD_LINE_JSON_PATH, text, mode=0o600)


def _apply_sysctl(guest: Guest, key: str, value: str) -> None:
    path = guest.path("/proc/sys/" + key.replace(".", "/"))
    if not path.parent.is_dir():  # e.g. a per-NIC key for a NIC not plugged in yet (the file applies it)
        guest.log(f"{key} not applied now: {path.parent} does not exist")
        return
    path.write_text(f"{value}\n")


def configure_sysctls(guest: Guest, config: contract.BootConfig) -> None:
    """Forwarding (routers only; their FORWARD policy is DROP otherwise), rp_filter and IPv6 as the
    command line and the role want them. Applied now and kept for any later ``sysctl --system``."""
    values = contract.role_sysctls(config)
    lines = [f"# Written by cloud-early-config for role {config.role or 'none'}"]
    guest.write(
        contract.FORWARD_SYSCTL_PATH, "\n".join([*lines, *(f"{k} = {v}" for k, v in values.items())]) + "\n"
    )
    for key, value in values.items():
        try:
            _apply_sysctl(guest, key, value)
        except OSError as exc:  # one key must not stop the others
            guest.log(f"setting {key} failed: {exc}")


def nic_renames(current: dict[str, str], wanted: list[str]) -> list[tuple[str, str]]:
    """The ``ip link`` renames that give ethN the MAC at position N of ``wanted`` (``current``: name -> MAC).

    NICs to move go to a temporary name first, so two NICs can swap names. A NIC whose name is wanted for
    another MAC but whose own MAC is not listed moves to the first ethK nobody wants.
    """
    target = {mac: f"eth{index}" for index, mac in enumerate(wanted)}
    movers = sorted(name for name, mac in current.items() if mac in target and target[mac] != name)
    taken = set(target.values()) | set(current)
    blockers = sorted(name for name, mac in current.items() if mac not in target and name in target.values())
    renames = [(name, f"cloudtmp{i}") for i, name in enumerate(movers)]
    spare = (f"eth{k}" for k in range(len(wanted) + len(current) + 1) if f"eth{k}" not in taken)
    renames += [(name, next(spare)) for name in blockers]
    renames += [(f"cloudtmp{i}", target[current[name]]) for i, name in enumerate(movers)]
    return renames


def order_nics_by_mac(guest: Guest, config: contract.BootConfig) -> None:
    """``nic_macs``: ethN gets the MAC listed at position N (CloudStack's common.sh names NICs so), before
    the network is configured. Renames need the link down: the boot's NICs are not up yet."""
    if not config.nic_macs:
        return
    current = {}
    for path in sorted(guest.path("/sys/class/net").glob("eth*")):
        address = path / "address"
        if address.is_file():
            current[path.name] = address.read_text().strip().lower()
    for mac in config.nic_macs:
        if mac not in current.values():
            guest.log(f"nic_macs lists {mac}, which no NIC has")
    for old, new in nic_renames(current, config.nic_macs):
        try:
            guest.run(["ip", "link", "set", "dev", old, "name", new])
            guest.log(f"NIC {old} renamed {new} (nic_macs)")
        except Exception as exc:  # noqa: BLE001 - the others are still worth trying
            guest.log(f"renaming {old} to {new} failed: {exc}")


def configure_ntp(guest: Guest, config: contract.BootConfig) -> None:
    """``ntpserverlist``: systemd-timesyncd uses these servers (a drop-in; without the key, its defaults)."""
    dropin = guest.path(contract.TIMESYNCD_DROPIN)
    if config.ntp_servers:
        guest.write(contract.TIMESYNCD_DROPIN, contract.timesyncd_dropin(config.ntp_servers))
        guest.log(f"NTP servers: {', '.join(config.ntp_servers)}")
    elif dropin.exists():
        dropin.unlink()
    else:
        return
    # A running daemon re-reads its configuration on restart; one not started yet reads it when it starts.
    guest.run(["systemctl", "try-restart", "--no-block", "systemd-timesyncd.service"])


def set_root_password(guest: Guest, config: contract.BootConfig) -> None:
    """``vmpassword`` becomes root's password (given in clear, as CloudStack's parse_cmd_line feeds it to
    chpasswd). It goes to chpasswd on stdin, never in an argument, a log line or a file of ours."""
    if not config.vm_password:
        return
    guest.feed(["chpasswd"], f"root:{config.vm_password}\n")
    guest.log("root password set from vmpassword")


def hold_ssh_for_late_config(guest: Guest, config: contract.BootConfig) -> None:
    """Late configuration only: stop the boot's sshd before the key is installed. Left running, it would
    accept the new key at once and then be restarted for the new control address (restart_after_late_config),
    resetting the connection of a host that had just seen SSH answer; stopped, the key works only on the
    sshd that stays."""
    if guest.late:
        guest.run(["systemctl", "stop", "ssh.service"])


def install_authorized_key(guest: Guest, config: contract.BootConfig) -> None:
    if not config.authorized_key:
        guest.log("no authorized_key on the command line: SSH will accept no key")
        return
    ssh_dir = guest.path("/root/.ssh")
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(ssh_dir, 0o700)
    guest.write("/root/.ssh/authorized_keys", config.authorized_key + "\n", mode=0o600)


def sshd_config_listening(text: str, address: str | None) -> str:
    """sshd_config with one ``ListenAddress <address>:3922`` where its first ListenAddress line stood
    (commented or not; CloudStack's setup_sshd rewrites that line), before any ``Match`` block, or at the
    end; every other ListenAddress line goes. ``address`` None: no ListenAddress (sshd listens on all)."""
    lines = text.splitlines()
    wanted = [f"ListenAddress {address}:{contract.SSH_PORT}"] if address else []
    at = next((i for i, line in enumerate(lines) if LISTEN_LINE.match(line)), None)
    kept = [line for line in lines if not LISTEN_LINE.match(line)]
    if at is None:
        at = next((i for i, line in enumerate(kept) if line.lstrip().lower().startswith("match ")), len(kept))
    else:
        at -= sum(1 for line in lines[:at] if LISTEN_LINE.match(line))
    return "\n".join(kept[:at] + wanted + kept[at:]) + "\n"


def configure_ssh_listen(guest: Guest, config: contract.BootConfig) -> None:
    """Bind sshd (port 3922) to the control NIC's address, in /etc/ssh/sshd_config itself: whatever
    sshd_config a patch from the management server left (CloudStack's has no ListenAddress and reads no
    drop-in directory), at every boot.

    The address may not be up when sshd starts (a NIC that arrives late, an ifup that fails): non-local
    binds (CloudStack's sysctl.conf allows them too) let sshd start anyway and answer as soon as the
    address exists. Where they cannot be allowed, sshd listens on every address and the firewall keeps
    3922 to the control NIC.
    """
    ip = config.control_ip
    try:
        guest.path("/proc/sys/net/ipv4/ip_nonlocal_bind").write_text("1\n")
    except OSError as exc:
        guest.log(f"cannot allow non-local binds ({exc}); sshd listens on all addresses")
        ip = None
    sshd_config = guest.path(SSHD_CONFIG)
    text = sshd_config.read_text() if sshd_config.is_file() else ""
    guest.write(SSHD_CONFIG, sshd_config_listening(text, ip))
    guest.path(OLD_SSH_LISTEN_CONF).unlink(missing_ok=True)


def write_service_lists(guest: Guest, config: contract.BootConfig) -> None:
    """The role's service lists (CloudStack's setup scripts write them; postinit applies them)."""
    enabled, disabled = contract.service_lists(config.role)
    guest.write(contract.ENABLED_SVCS_PATH, "".join(f"{s}\n" for s in enabled))
    guest.write(contract.DISABLED_SVCS_PATH, "".join(f"{s}\n" for s in disabled))


def configure_role_services(guest: Guest, config: contract.BootConfig) -> None:
    """What the role's setup script leaves its services: dnsmasq's base configuration on a router (and
    every role's upstream resolvers for it), apache without Debian's sites (the storage VM's own virtual
    host on its public address)."""
    dnsmasq.configure_dnsmasq(guest, config)
    apache.configure_apache(guest, config)
    if config.role == "consoleproxy" and config.params.get("vncport", "").isdigit():
        guest.write(VNC_PORT_FILE, config.params["vncport"] + "\n")  # consoleproxy.sh keeps it there


def start_ssh(guest: Guest, config: contract.BootConfig) -> None:
    if guest.late:
        return  # restart_after_late_config restarts it once the NICs are up
    # Queued, not waited for: ssh.service runs after network.target, which waits for this unit.
    guest.run(["systemctl", "start", "--no-block", "ssh.service"])


def bring_up_network(guest: Guest, config: contract.BootConfig) -> None:
    """Late configuration only: the boot's ifup already ran, so give each NIC its new address now."""
    for nic in sorted(config.nics.values(), key=lambda n: n.index):
        if not guest.path(f"/sys/class/net/{nic.name}").exists():
            guest.log(f"{nic.name} is not present; it comes up when it is plugged in")
            continue
        for argv in (["ip", "addr", "flush", "dev", nic.name], ["ifup", "--force", nic.name]):
            try:
                guest.run(argv)
            except Exception as exc:  # noqa: BLE001 - one NIC must not stop the others
                guest.log(f"{' '.join(argv)} failed: {exc}")


def restart_after_late_config(guest: Guest, config: contract.BootConfig) -> None:
    """Late configuration only: postinit runs again for the role (services, rules, boot_up_done), then sshd
    binds the new control address. Queued in that order, ssh's job waits for postinit's (postinit is
    ordered before ssh), so a host that sees SSH answer finds the boot done, as after an on-time boot."""
    for unit in (POSTINIT_UNIT, "ssh.service"):
        try:
            guest.run(["systemctl", "restart", "--no-block", unit])
        except Exception as exc:  # noqa: BLE001 - e.g. an image without the agent element
            guest.log(f"restarting {unit} failed: {exc}")


STEPS: tuple[Callable[[Guest, contract.BootConfig], None], ...] = (
    configure_hostname,
    write_cloudstack_state,
    order_nics_by_mac,
    configure_network,
    configure_sysctls,
    configure_ntp,
    set_root_password,
    hold_ssh_for_late_config,
    install_authorized_key,
    configure_ssh_listen,
    firewall.apply_firewall,
    configure_role_services,
    write_service_lists,
    start_ssh,
)


LATE_STEPS: tuple[Callable[[Guest, contract.BootConfig], None], ...] = (
    bring_up_network,
    restart_after_late_config,
)
# Sources that mean the host has not (yet) written this boot's command line.
FALLBACK_SOURCES = ("previous boot", "/proc/cmdline")


def forget_data_bags(guest: Guest) -> None:
    """A command line the KVM host wrote this boot: the VM was started by the management server, which
    sends every configuration again; the JSON data bags of an earlier life go (CloudStack's init.sh)."""
    for bag in sorted(guest.path(contract.CLOUDSTACK_CONF_DIR).glob("*.json")):
        bag.unlink()
        guest.log(f"{contract.CLOUDSTACK_CONF_DIR}/{bag.name} removed (the management server sends it again)")


def early_config(guest: Guest) -> contract.BootConfig:
    guest.path(contract.CACHE_DIR).mkdir(parents=True, exist_ok=True)
    guest.path(contract.BOOT_DONE_PATH).unlink(missing_ok=True)  # this boot is not done yet
    text, source, hypervisor = channels.obtain_cmdline(guest)
    if source != "qemu-guest-agent":
        guest.write(contract.CMDLINE_PATH, text + "\n", mode=0o600)  # it may hold vmpassword
    else:
        forget_data_bags(guest)
    config = configure(guest, text, source, hypervisor)
    if source in FALLBACK_SOURCES and hypervisor == "kvm":
        # A loaded host may deliver the command line after our wait: keep listening for it, or the VM
        # stays unconfigured (and unreachable) for good.
        try:
            guest.run(["systemctl", "start", "--no-block", contract.CMDLINE_WATCH_UNIT])
            guest.log(f"listening for a command line from the host ({contract.CMDLINE_WATCH_UNIT})")
        except Exception as exc:  # noqa: BLE001 - the boot goes on with what it has
            guest.log(f"starting {contract.CMDLINE_WATCH_UNIT} failed: {exc}")
    return config


def late_config(guest: Guest) -> contract.BootConfig | None:
    """The host wrote /var/cache/cloud/cmdline after the boot stopped waiting: configure from it now.

    Run by cloud-late-config.service when cloud-cmdline-watch.path sees the file change. Nothing is done
    when the file is empty or is the command line this boot already applied (the host retries writes).
    """
    guest.late = True
    guest.path(contract.BOOT_DONE_PATH).unlink(missing_ok=True)  # done again once postinit ran again
    text = channels.wait_for_cmdline_file(
        str(guest.path(contract.CMDLINE_PATH)), 10.0, 0.0, guest.clock, guest.sleep
    )
    if not text:
        guest.log("the command line file changed but holds no command line; nothing to do")
        return None
    applied = guest.path(contract.APPLIED_CMDLINE_PATH)
    if applied.is_file() and applied.read_text(errors="replace").strip() == text:
        guest.log("the host wrote the command line this boot applied already; nothing to do")
        return None
    hypervisor = channels.detect_hypervisor(
        guest.run, str(guest.path(channels.DMI_DIR)), str(guest.path("/proc/xen"))
    )
    return configure(guest, text, "qemu-guest-agent, after the boot", channels.CHANNEL_HYPERVISOR.get(
        hypervisor or "", "kvm"))  # fmt: skip


def configure(guest: Guest, text: str, source: str, hypervisor: str) -> contract.BootConfig:
    config = contract.read_config(contract.parse_cmdline(text), hypervisor)
    guest.log(f"command line from {source}: role {config.role or 'none'}, name {config.name or '-'}, "
              f"control NIC {config.control_nic} on {hypervisor}")  # fmt: skip
    for problem in config.problems:
        guest.log(problem)
    for step in (*STEPS, *LATE_STEPS) if guest.late else STEPS:
        try:
            step(guest, config)
        except Exception as exc:  # noqa: BLE001 - one failed step must not stop the others
            guest.log(f"{step.__name__} failed: {type(exc).__name__}: {exc}")
    try:
        guest.write(contract.APPLIED_CMDLINE_PATH, text.strip() + "\n", mode=0o600)
    except OSError as exc:
        guest.log(f"recording the applied command line failed: {exc}")
    guest.log("late configuration done" if guest.late else "early configuration done")
    return config


def main(argv: list[str] | None = None) -> int:
    if "--late" in (sys.argv[1:] if argv is None else argv):
        late_config(Guest(program="cloud-late-config"))
    else:
        early_config(Guest())
    return 0


if __name__ == "__main__":
    sys.exit(main())
