"""Boot command line keys.

What CloudStack 4.20's optional boot keys leave on the running VM: NICs named by nic_macs, IPv6 addresses,
the default IPv6 route, the NTP servers systemd-timesyncd uses, and root's password from vmpassword (never
kept in clear by the boot). Each check applies where the harness sends its key (:mod:`systemvm.boot.testnet`:
nic_macs on KVM, IPv6 on a KVM router's data NIC; NTP servers and vmpassword everywhere), and fails when
the key was not sent there.
"""

from __future__ import annotations

import shlex

import pytest

from systemvm import contract
from systemvm.check.appliance.target import Params, run_ok

pytestmark = pytest.mark.live


def sent_config(params: Params) -> contract.BootConfig:
    return contract.read_config(params.cmdline_args, params.get("hypervisor", "kvm"))


@pytest.mark.applies(hypervisors=("kvm",))
def test_nics_carry_the_macs_nic_macs_lists(host, params) -> None:
    """Each ethN has the MAC that nic_macs lists at position N"""
    macs = sent_config(params).nic_macs
    if not macs:
        pytest.skip("the command line has no nic_macs")
    script = "; ".join(
        f'echo "eth{i}=$(cat /sys/class/net/eth{i}/address 2>/dev/null)"' for i in range(len(macs))
    )
    found = dict(line.split("=", 1) for line in run_ok(host, script).splitlines() if "=" in line)
    wrong = {f"eth{i}": found.get(f"eth{i}") for i, mac in enumerate(macs) if found.get(f"eth{i}") != mac}
    assert not wrong, f"NICs whose MAC is not the one nic_macs lists: {wrong} (nic_macs {macs})"


@pytest.mark.applies(roles=contract.GUEST_FACING_ROLES, hypervisors=("kvm",))
def test_nics_have_their_ipv6_addresses(host, params) -> None:
    """Each NIC given ethNip6/ethNip6prelen has that IPv6 address"""
    nics = [n for n in sent_config(params).nics.values() if n.interface6]
    if not nics:
        pytest.skip("the command line gives no NIC an IPv6 address")
    for nic in nics:
        words = run_ok(host, f"ip -6 -o addr show dev {nic.name} scope global").split()
        assert str(nic.interface6) in words, f"{nic.name} lacks {nic.interface6}: {' '.join(words) or 'none'}"


@pytest.mark.applies(roles=contract.GUEST_FACING_ROLES, hypervisors=("kvm",))
def test_default_ipv6_route_is_ip6gateway(host, params) -> None:
    """The default IPv6 route goes via ip6gateway"""
    config = sent_config(params)
    if not config.gateway6 or not any(n.interface6 for n in config.nics.values()):
        pytest.skip("the command line has no ip6gateway (or no NIC with an IPv6 address)")
    route = run_ok(host, "ip -6 route show default").split()
    assert "via" in route and route[route.index("via") + 1] == config.gateway6, (
        f"ip -6 route show default: '{' '.join(route) or 'no route'}'; expected via {config.gateway6}"
    )


def test_timesyncd_uses_the_ntp_servers_sent(host, params) -> None:
    """systemd-timesyncd's configuration names the ntpserverlist servers, in order"""
    servers = sent_config(params).ntp_servers
    if not servers:
        pytest.skip("the command line has no ntpserverlist")
    merged = run_ok(host, "systemd-analyze cat-config systemd/timesyncd.conf")
    settings = [line.split("=", 1)[1].split() for line in merged.splitlines() if line.startswith("NTP=")]
    assert settings and settings[-1] == servers, (
        f"timesyncd's last NTP= setting is {settings[-1] if settings else 'absent'}; expected {servers}"
    )


def test_root_password_is_vmpassword_and_kept_hashed_only(host, params) -> None:
    """root's password is vmpassword, stored hashed, and the boot's log does not hold it in clear"""
    password = sent_config(params).vm_password
    if not password:
        pytest.skip("the command line has no vmpassword")
    entry = run_ok(host, "getent shadow root").strip().split(":")
    assert len(entry) > 1 and entry[1].startswith("$"), "root has no hashed password in /etc/shadow"
    # Debian 12's python3 still has crypt (deprecated): it hashes with the stored salt and method
    verify = (
        f"printf %s {shlex.quote(password)} | python3 -W ignore -c "
        + shlex.quote(
            "import crypt, sys; stored = sys.argv[1]; "
            "sys.exit(0 if crypt.crypt(sys.stdin.read(), stored) == stored else 1)"
        )
        + f" {shlex.quote(entry[1])}"
    )
    assert host.run(verify).rc == 0, "root's password hash does not match vmpassword"
    for where in (contract.CLOUD_LOG, "/etc/shadow", "/etc/passwd"):
        found = host.run(f"grep -cF -- {shlex.quote(password)} {where}").stdout.strip()
        assert found in ("0", ""), f"{where} holds vmpassword in clear"
    journal = host.run(f"journalctl -b --no-pager | grep -cF -- {shlex.quote(password)}").stdout.strip()
    assert journal in ("0", ""), "this boot's journal holds vmpassword in clear"


def test_command_line_copies_are_roots_only(host, params) -> None:
    """The boot's copies of the command line (it may hold vmpassword) are readable by root only"""
    if params["role"] not in contract.ROLES:
        pytest.skip("no known role: cmd_line.json is not written")
    for path in (contract.CMD_LINE_JSON_PATH, contract.APPLIED_CMDLINE_PATH):
        mode = run_ok(host, f"stat -c %a {shlex.quote(path)}").strip()
        assert mode == "600", f"{path} has mode {mode}; expected 600"
