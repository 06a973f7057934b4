"""Per-role iptables rules in CloudStack's form (contract.base_rules_v4, boot_rules_v4, firewall_rules_v6),
loaded into real netfilter in a private netns, and the rules systemvm.guest.firewall writes and loads."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from systemvm import contract
from systemvm.guest import firewall
from systemvm.guest.system import Guest


def load_and_save(v4: str, v6: str, tmp_path) -> tuple[str, str]:
    """iptables-restore the rules in a network namespace of our own and read back what the kernel holds."""
    (tmp_path / "rules.v4").write_text(v4)
    (tmp_path / "rules.v6").write_text(v6)
    script = (f"iptables-restore {tmp_path}/rules.v4 && ip6tables-restore {tmp_path}/rules.v6 && "
              f"iptables-save > {tmp_path}/saved.v4 && ip6tables-save > {tmp_path}/saved.v6")  # fmt: skip
    subprocess.run(["unshare", "--net", "sh", "-c", script], check=True, capture_output=True, text=True)
    return (tmp_path / "saved.v4").read_text(), (tmp_path / "saved.v6").read_text()


def rules(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("-A", ":"))]


needs_netfilter = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("iptables-restore") or not shutil.which("unshare"),
    reason="needs root, iptables and unshare (a private network namespace)",
)


def boot_rules(role: str, **keys: str) -> str:
    config = contract.read_config({"type": role, "eth0ip": "10.1.1.1", "eth0mask": "255.255.255.0", **keys})
    base = contract.base_rules_v4(contract.BOOT_RULES_FILE_ROLE.get(role, role))
    return contract.boot_rules_v4(
        base, role, config.control_nic, firewall.guest_source(config), keys.get("vncport")
    )


def rule_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("-A ", "-I "))]


@needs_netfilter
@pytest.mark.parametrize("role", contract.ROLES)
def test_role_rules_load_into_netfilter(role, tmp_path):
    """Each role's rules, as the boot adjusts them, load into real netfilter: every rule is there."""
    v4 = boot_rules(role)
    saved_v4, saved_v6 = load_and_save(v4, contract.firewall_rules_v6(), tmp_path)
    assert len(rules(saved_v4)) - saved_v4.count("\n:") == len(rule_lines(v4))
    assert rules(saved_v6) == rules(contract.firewall_rules_v6())


@pytest.mark.parametrize("role", contract.ROLES)
def test_policies_drop_and_ssh_only_on_the_control_nic(role):
    control = contract.control_nic(role)
    v4 = boot_rules(role)
    assert ":INPUT DROP [0:0]" in v4 and ":FORWARD DROP [0:0]" in v4
    ssh = [line for line in v4.splitlines() if f"--dport {contract.SSH_PORT}" in line]
    assert len(ssh) == 1 and f"-A INPUT -i {control} -p tcp " in ssh[0] and "-j ACCEPT" in ssh[0]
    assert "--dport 22 " not in v4


@pytest.mark.parametrize("role", contract.ROLES)
def test_base_rules_are_spelled_as_cloudstacks(role):
    """CloudStack's CsNetfilter rebuilds rules from `-m state --state`, never from conntrack's options: a
    rule spelled with them could not be deleted by CloudStack's scripts."""
    v4 = contract.base_rules_v4(role)
    assert "conntrack" not in v4 and "--ctstate" not in v4
    assert any("-m state --state RELATED,ESTABLISHED -j ACCEPT" in line for line in rule_lines(v4))


@pytest.mark.parametrize("role", contract.ROLES)
def test_the_roles_ports_are_the_ones_its_rules_open(role):
    v4 = contract.base_rules_v4(role)
    opened = {(int(line.split("--dport ")[1].split()[0]), "udp" if "-p udp" in line else "tcp")
              for line in rule_lines(v4) if "--dport " in line and "-j ACCEPT" in line}  # fmt: skip
    opened.discard((contract.SSH_PORT, "tcp"))
    assert {p for p, proto in opened if proto == "tcp"} == set(contract.ROLE_PORTS[role])
    assert {p for p, proto in opened if proto == "udp"} == set(contract.ROLE_UDP_PORTS[role])


def test_router_rules_as_the_boot_adjusts_them():
    """router.sh limits the guest DNS rules to the DHCP range's network; a DHCP-only router boots with the
    router's file (init.sh), whose metadata port its own file leaves out."""
    v4 = boot_rules("router", cidrsize="24")
    assert "-A INPUT -i eth0 -p udp -m udp --dport 53 -s 10.1.1.1/24 -j ACCEPT" in v4
    assert "-A INPUT -i eth0 -p tcp -m tcp --dport 53 -s 10.1.1.1/24 -j ACCEPT" in v4
    assert "-A FORWARD -i eth0 -o eth2 -j FW_OUTBOUND" in v4
    assert "--dport 80 " in boot_rules("dhcpsrvr") and "--dport 80 " not in contract.base_rules_v4("dhcpsrvr")
    assert " -s " not in boot_rules("dhcpsrvr")


def test_console_proxy_opens_the_vnc_port_it_is_given():
    assert "-A INPUT -i eth2 -p tcp -m state --state NEW -m tcp --dport 8080 -j ACCEPT" in boot_rules(
        "consoleproxy"
    )
    v4 = boot_rules("consoleproxy", vncport="8443")
    assert "--dport 8443 " in v4 and "--dport 8080 " not in v4


def test_no_role_opens_only_ssh():
    v4 = contract.default_rules_v4("eth0")
    accepted = [line for line in v4.splitlines() if "--dport" in line]
    assert accepted == [
        "-A INPUT -i eth0 -p tcp -m tcp -m state --state NEW,ESTABLISHED --dport 3922 -j ACCEPT"
    ]


def test_the_image_is_built_with_every_roles_file_and_the_no_role_rules(tmp_path):
    """systemvm-firewall's install step: CloudStack's rules file per role, and an image no command line
    configured accepts SSH on eth0 only."""
    firewall.write_image_rules(Guest(tmp_path, echo=False))
    for role in contract.ROLES:
        assert (tmp_path / contract.rules_file(role).lstrip("/")).read_text() == contract.base_rules_v4(role)
    v4 = (tmp_path / contract.RULES_V4_PATH.lstrip("/")).read_text()
    assert v4 == contract.default_rules_v4("eth0")
    assert (tmp_path / contract.RULES_V6_PATH.lstrip("/")).read_text() == contract.firewall_rules_v6()
    assert oct((tmp_path / contract.RULES_V4_PATH.lstrip("/")).stat().st_mode & 0o777) == "0o644"


def test_the_boot_loads_the_rules_file_on_the_vm(tmp_path):
    """After a patch brought CloudStack's own iptables-router, the boot copies that one (as init.sh does),
    with 3922 moved to the control NIC."""
    guest = Guest(tmp_path, echo=False)
    theirs = "*filter\n:INPUT DROP [0:0]\n-A INPUT -i eth9 -p tcp -m tcp --dport 3922 -j ACCEPT\nCOMMIT\n"
    guest.write(contract.rules_file("router"), theirs)
    config = contract.read_config({"type": "router", "eth1ip": "169.254.1.2", "eth1mask": "255.255.0.0"})
    assert "-A INPUT -i eth1 -p tcp -m tcp --dport 3922 -j ACCEPT" in firewall.role_rules(guest, config)
