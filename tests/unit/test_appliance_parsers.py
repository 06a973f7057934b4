"""The appliance checks' parsers, fed with outputs recorded from Debian 12 (ss, iptables, ipsec)."""

from __future__ import annotations

from pathlib import Path

import pytest

from systemvm.check.appliance.target import (
    key_identity,
    normalized_rule,
    parse_listeners,
    parse_plugins,
    parse_policies,
    parse_rules,
    read_package_list,
    rules_accepting,
)

SS = """\
LISTEN 0      128      169.254.3.4:3922      0.0.0.0:*    users:(("sshd",pid=612,fd=3))
LISTEN 0      511          0.0.0.0:80        0.0.0.0:*    users:(("apache2",pid=700,fd=4))
LISTEN 0      128             [::]:22           [::]:*    users:(("sshd",pid=9,fd=4))
LISTEN 0      32    0.0.0.0%eth0:53          0.0.0.0:*    users:(("dnsmasq",pid=5,fd=6))
"""

IPTABLES_S = """\
-P INPUT DROP
-P FORWARD DROP
-P OUTPUT ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -i eth0 -p tcp -m tcp --dport 3922 -j ACCEPT
-A INPUT -i eth2 -p tcp -m multiport --dports 80,443 -j ACCEPT
-A INPUT -p udp -m udp --dport 53 -j ACCEPT
-A INPUT -s 10.0.0.0/8 -p tcp -m tcp --dport 8001 -j ACCEPT
"""

RULES_V4 = """\
*nat
:PREROUTING ACCEPT [0:0]
-A PREROUTING -p tcp --dport 3922 -j ACCEPT
COMMIT
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m state --state ESTABLISHED,RELATED -j ACCEPT
-A INPUT -i eth0 -p tcp --dport 3922 -j ACCEPT
COMMIT
"""

LISTPLUGINS = """\
List of loaded Plugins:

charon:
    CUSTOM:libcharon
        NONCE_GEN
aes:
    CRYPTER:AES_CBC-16
kernel-netlink:
    CUSTOM:kernel-ipsec
"""


def test_listeners_from_ss() -> None:
    assert parse_listeners(SS) == [
        ("169.254.3.4", 3922, 'users:(("sshd",pid=612,fd=3))'),
        ("0.0.0.0", 80, 'users:(("apache2",pid=700,fd=4))'),
        ("::", 22, 'users:(("sshd",pid=9,fd=4))'),
        ("0.0.0.0", 53, 'users:(("dnsmasq",pid=5,fd=6))'),
    ]


def test_policies_from_live_rules_and_save_file() -> None:
    assert parse_policies(IPTABLES_S) == {"INPUT": "DROP", "FORWARD": "DROP", "OUTPUT": "ACCEPT"}
    # the nat table's PREROUTING ACCEPT must not leak into the filter table's policies
    assert parse_policies(RULES_V4) == {"INPUT": "DROP", "FORWARD": "DROP", "OUTPUT": "ACCEPT"}
    assert parse_policies(IPTABLES_S.replace("-P INPUT DROP", "-P INPUT ACCEPT"))["INPUT"] == "ACCEPT"


def test_rules_accepting_a_port() -> None:
    rules = parse_rules(IPTABLES_S)
    assert len(rules) == 6
    on_3922 = rules_accepting(rules, 3922)
    # lo accepts everything; the ctstate rule only established traffic; eth0's rule is the SSH rule
    assert [r.get("-i") for r in on_3922] == ["lo", "eth0"]
    assert [r.get("-i") for r in rules_accepting(rules, 443)] == ["lo", "eth2"]
    assert len(rules_accepting(rules, 53)) == 1  # the udp rule does not count for tcp...
    assert len(rules_accepting(rules, 53, ("tcp", "udp"))) == 2  # ...but does for DNS
    assert len(rules_accepting(rules, 8001)) == 1  # a source-restricted rule is not "accepted"...
    assert len(rules_accepting(rules, 8001, some_sources=True)) == 2  # ...unless some sources will do
    wide = parse_rules(IPTABLES_S + "-A INPUT -p tcp -m tcp --dport 3922 -j ACCEPT\n")
    assert [r.get("-i") for r in rules_accepting(wide, 3922)] == ["lo", "eth0", None]
    # CloudStack's spelling: a NEW rule accepts; a multicast group's accept (VRRP) carries no TCP to us
    cloudstack = parse_rules(
        "-A INPUT -d 224.0.0.18/32 -j ACCEPT\n"
        "-A INPUT -i eth1 -p tcp -m tcp -m state --state NEW,ESTABLISHED --dport 3922 -j ACCEPT\n"
        "-A INPUT -i eth2 -m state --state RELATED,ESTABLISHED -j ACCEPT\n"
    )
    assert [r.get("-i") for r in rules_accepting(cloudstack, 3922)] == ["eth1"]


def test_a_source_network_compares_as_the_kernel_lists_it() -> None:
    """router.sh writes the guest range's first address with the prefix; the kernel keeps the network."""
    saved = parse_rules("-A INPUT -i eth0 -p udp -m udp --dport 53 -s 10.1.1.1/24 -j ACCEPT")
    live = parse_rules("-A INPUT -s 10.1.1.0/24 -i eth0 -p udp -m udp --dport 53 -j ACCEPT")
    assert normalized_rule(saved[0]) == normalized_rule(live[0])
    other = parse_rules("-A INPUT -s 10.1.2.0/24 -i eth0 -p udp -m udp --dport 53 -j ACCEPT")
    assert normalized_rule(saved[0]) != normalized_rule(other[0])


def test_saved_and_live_rules_compare_by_meaning() -> None:
    live = {normalized_rule(r) for r in parse_rules(IPTABLES_S)}
    saved = parse_rules(RULES_V4)
    assert len(saved) == 3  # the nat table's rule is not an INPUT rule of the filter table
    assert all(normalized_rule(r) in live for r in saved)
    changed = parse_rules(RULES_V4.replace("--dport 3922", "--dport 3923"))
    assert normalized_rule(changed[2]) not in live


def test_key_identity_ignores_options_and_comments() -> None:
    line = 'no-pty,from="10.0.0.1" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIabc root@mgmt'
    assert key_identity(line) == ("ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIabc")
    assert key_identity("# comment") is None
    assert key_identity("") is None


def test_plugins_from_listplugins() -> None:
    assert parse_plugins(LISTPLUGINS) == {"charon", "aes", "kernel-netlink"}


def test_package_list_reads_both_data_files(tmp_path: Path) -> None:
    (tmp_path / "packages.txt").write_text("# comment\nhaproxy  # inline\n\ncurl\n")
    (tmp_path / "packages-i386.txt").write_text("# none\nlinux-image-686-pae\ncurl\n")
    assert read_package_list(tmp_path, "i386") == ["haproxy", "curl", "linux-image-686-pae"]
    assert read_package_list(tmp_path, "amd64") == ["haproxy", "curl"]
    with pytest.raises(AssertionError, match="missing"):
        read_package_list(tmp_path / "absent", "amd64")


def test_the_repositorys_package_list_is_readable() -> None:
    repo = Path(__file__).resolve().parents[2]
    names = read_package_list(repo / "elements" / "systemvm-packages", "amd64")
    assert {"haproxy", "strongswan", "openssh-server", "openjdk-17-jre-headless"} <= set(names)
