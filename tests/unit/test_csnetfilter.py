"""The model of CloudStack's CsNetfilter (systemvm.lab.csnetfilter): its parse, rebuild, equality and
compare, on recorded ``iptables-save`` text, and for real: rule sets loaded with iptables-restore into a
network namespace of the test's own, the model's commands run there, ``iptables-save`` read back."""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from systemvm import contract
from systemvm.lab import csnetfilter, netlab, routerlab, updateconfig
from systemvm.lab.csnetfilter import Command, compare, parse_save, rebuild, rule_dict

CONNTRACK = "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
STATE = "-A INPUT -i eth0 -m state --state RELATED,ESTABLISHED -j ACCEPT"

# The router's base rules as the image ships them (CloudStack's etc/iptables/iptables-router) and as its boot
# loads them: 3922 on the control NIC, the guest DNS rules limited to <dhcprange>/<cidrsize> (router.sh).
ROUTER_FILE = contract.base_rules_v4("router")
ROUTER_BASE = contract.boot_rules_v4(ROUTER_FILE, "router", "eth1", "10.1.1.1/24")

# What iptables-save (1.8.9, nf_tables, as on Debian 12) prints once ROUTER_BASE is loaded.
CONNMARK_SAVED = "-j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff"
ROUTER_SAVED = f"""*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -m state --state RELATED,ESTABLISHED {CONNMARK_SAVED}
-A POSTROUTING -p udp -m udp --dport 68 -j CHECKSUM --checksum-fill
COMMIT
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:FW_EGRESS_RULES - [0:0]
:FW_OUTBOUND - [0:0]
-A INPUT -d 224.0.0.18/32 -j ACCEPT
-A INPUT -d 225.0.0.50/32 -j ACCEPT
-A INPUT -i eth0 -m state --state RELATED,ESTABLISHED -j ACCEPT
-A INPUT -i eth1 -m state --state RELATED,ESTABLISHED -j ACCEPT
-A INPUT -i eth2 -m state --state RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p icmp -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -i eth0 -p udp -m udp --dport 67 -j ACCEPT
-A INPUT -s 10.1.1.0/24 -i eth0 -p udp -m udp --dport 53 -j ACCEPT
-A INPUT -s 10.1.1.0/24 -i eth0 -p tcp -m tcp --dport 53 -j ACCEPT
-A INPUT -i eth1 -p tcp -m tcp --dport 3922 -m state --state NEW,ESTABLISHED -j ACCEPT
-A INPUT -i eth0 -p tcp -m tcp --dport 80 -m state --state NEW -j ACCEPT
-A FORWARD -i eth0 -o eth1 -m state --state RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -i eth2 -o eth0 -m state --state RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -i eth0 -o eth0 -m state --state NEW -j ACCEPT
-A FORWARD -i eth0 -o eth0 -m state --state RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -i eth0 -o eth2 -j FW_OUTBOUND
-A FW_EGRESS_RULES -j ACCEPT
-A FW_OUTBOUND -m state --state RELATED,ESTABLISHED -j ACCEPT
-A FW_OUTBOUND -j FW_EGRESS_RULES
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
"""
CMDLINE = (
    "template=domP type=router name=r-4-VM eth0ip=10.1.1.1 eth0mask=255.255.255.0 eth1ip=169.254.3.4 "
    "eth1mask=255.255.0.0 eth2ip=198.51.100.10 eth2mask=255.255.255.0 gateway=198.51.100.1 "
    "domain=cs1cloud.internal dns1=8.8.8.8"
)


# ------------------------------------------------------------------------------------------ on recorded text


def test_a_rule_becomes_cloudstacks_dict_with_its_string_rewrites() -> None:
    assert rule_dict("-A INPUT ! -i eth1 -p udp -m udp --dport bootpc -j ACCEPT") == {
        "-A": "INPUT", "!_-i": "eth1", "-p": "udp", "-m": "udp", "--dport": "68", "-j": "ACCEPT",
    }  # fmt: skip
    state = rule_dict("-A PREROUTING -m state --state ESTABLISHED,RELATED -j CONNMARK --restore-mark")
    assert state["-m2"] == "state" and state["--state"] == "RELATED,ESTABLISHED"
    assert rule_dict("-A POSTROUTING -p udp -j CHECKSUM --checksum-fill")["--checksum"] == "fill"
    assert "-p" not in rule_dict("-A FORWARD -p all -j ACCEPT")


def test_pairing_keeps_the_last_of_a_repeated_key_and_shifts_after_a_valueless_flag() -> None:
    two_modules = rule_dict("-A INPUT -p tcp -m tcp --dport 22 -m comment --comment ssh -j ACCEPT")
    assert two_modules["-m"] == "comment" and two_modules["--comment"] == "ssh"
    shifted = rule_dict("-A INPUT -p tcp --syn -j ACCEPT")
    assert shifted == {"-A": "INPUT", "-p": "tcp", "--syn": "-j"}  # ACCEPT has no partner left
    # CsAcl's ingress spacing: four spaces become two, and the empty word shifts the pairs
    ingress = rule_dict(" -A FIREWALL_1.2.3.4 -s 0.0.0.0/0  -p tcp    --dport 8080  -j ACCEPT")
    assert ingress == {"-A": "FIREWALL_1.2.3.4", "-s": "0.0.0.0/0", "-p": "tcp", "": "--dport", "8080": "-j"}


def test_a_rebuild_keeps_only_cloudstacks_keys_in_its_order() -> None:
    assert rebuild(rule_dict(CONNTRACK), "-D") == "-D INPUT -m conntrack -j ACCEPT"
    assert rebuild(rule_dict(STATE), "-D") == STATE.replace("-A", "-D")
    saved = "-A INPUT -s 10.1.1.0/24 -i eth0 -p udp -m udp --dport 53 -j ACCEPT"
    assert rebuild(rule_dict(saved)) == saved
    log = rule_dict("-A INPUT -p tcp -m tcp --sport 80 -j LOG --log-prefix x")
    assert rebuild(log) == "-A INPUT -p tcp -m tcp -j LOG"
    checksum = "-A POSTROUTING -p udp -m udp --dport 68 -j CHECKSUM --checksum-fill"
    assert rebuild(rule_dict(checksum), "-C") == checksum.replace("-A", "-C")
    assert rebuild(rule_dict("-A FORWARD ! -d 10.0.0.0/8 ! -o eth1 -j ACCEPT")) == (
        "-A FORWARD ! -d 10.0.0.0/8 ! -o eth1 -j ACCEPT"
    )


def test_equal_means_the_same_table_chain_and_dict_in_any_order() -> None:
    a = csnetfilter.parse_rule("-A INPUT -i eth0 -p tcp -m tcp --dport 53 -s 10.1.1.0/24 -j ACCEPT", "")
    b = csnetfilter.parse_rule("-A INPUT -s 10.1.1.0/24 -i eth0 -p tcp -m tcp --dport 53 -j ACCEPT", "filter")
    assert a.same(b) and a.table == "filter"
    assert not a.same(csnetfilter.parse_rule(b.text, "nat"))
    assert not a.same(csnetfilter.parse_rule(b.text.replace("INPUT", "FORWARD"), "filter"))
    # iptables-save prints /32; CsLoadBalancer writes the bare address: never equal
    lb = csnetfilter.parse_rule(
        "-A INPUT -p tcp -m tcp -d 1.2.3.4 --dport 80 -m state --state NEW -j ACCEPT", ""
    )
    saved = csnetfilter.parse_rule(
        "-A INPUT -d 1.2.3.4/32 -p tcp -m tcp --dport 80 -m state --state NEW -j ACCEPT", ""
    )
    assert not lb.same(saved)


def test_iptables_save_is_read_with_positions_per_chain_name() -> None:
    save = (
        "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n-A PREROUTING -j A\n-A PREROUTING -j B\n"
    )
    save += "COMMIT\n*mangle\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j C\nCOMMIT\n"
    read = parse_save(save)
    assert read.tables == ["nat", "mangle"]
    assert [(r.table, r.chain, r.count) for r in read.rules] == [
        ("nat", "PREROUTING", 1), ("nat", "PREROUTING", 2), ("mangle", "PREROUTING", 1),
    ]  # fmt: skip
    assert read.chains.has("nat", "POSTROUTING") and not read.chains.has("mangle", "POSTROUTING")


SAVE = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:FW_OUTBOUND - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -i eth1 -p tcp -m tcp --dport 3922 -j ACCEPT
-A FW_OUTBOUND -m state --state RELATED,ESTABLISHED -j ACCEPT
COMMIT
"""


def test_compare_creates_chains_adds_what_is_missing_and_deletes_the_rest() -> None:
    desired: list[csnetfilter.Desired] = [
        ("filter", "", "-A INPUT -i lo -j ACCEPT"),
        ("", "front", "-A INPUT -j NETWORK_STATS"),
        ("", "", "-A NETWORK_STATS -i eth0 -o eth2"),
        ("filter", "", "-A FW_OUTBOUND -m state --state RELATED,ESTABLISHED -j ACCEPT"),
        ("filter", 2, "-A INPUT -i eth0 -j ACCEPT"),
        ("filter", "", "-P INPUT DROP"),
        ("nat", "", "-A POSTROUTING -o eth2 -j SNAT --to-source 198.51.100.10"),
        ("", "", "-A NETWORK_STATS -i eth0 -o eth2"),  # a duplicate is added once
    ]
    assert compare(SAVE, desired) == [
        Command("chain", "iptables -t filter -N NETWORK_STATS"),
        Command("chain", "iptables -t nat -N POSTROUTING"),
        Command("add", "iptables -t filter -I INPUT -j NETWORK_STATS"),
        Command("add", "iptables -t filter -A NETWORK_STATS -i eth0 -o eth2"),
        Command("add", "iptables -t filter -I INPUT 2 -i eth0 -j ACCEPT"),
        Command("add", "iptables -t filter -P INPUT DROP"),
        Command("add", "iptables -t nat -A POSTROUTING -o eth2 -j SNAT --to-source 198.51.100.10"),
        Command("delete", "iptables -t filter -D INPUT -m conntrack -j ACCEPT"),
        Command("delete", "iptables -t filter -D INPUT -i eth1 -p tcp -m tcp --dport 3922 -j ACCEPT"),
    ]


def test_the_role_file_protects_its_a_lines_from_deletion_but_not_its_i_lines() -> None:
    role = "*filter\n-A INPUT -i eth1 -p tcp -m tcp --dport 3922 -j ACCEPT\n"
    role += "-I FW_OUTBOUND -m state --state RELATED,ESTABLISHED -j ACCEPT\n*nat\n-A INPUT -i lo -j ACCEPT\n"
    deletes = [c.command for c in compare(SAVE, [], role) if c.kind == "delete"]
    assert deletes == [
        "iptables -t filter -D INPUT -i lo -j ACCEPT",  # the role file has it in nat, not in filter
        "iptables -t filter -D INPUT -m conntrack -j ACCEPT",
        "iptables -t filter -D FW_OUTBOUND -m state --state RELATED,ESTABLISHED -j ACCEPT",
    ]
    unprotected = [c.command for c in compare(SAVE, [], None)]
    assert len(unprotected) == 4 and unprotected[2].endswith(
        "-D INPUT -i eth1 -p tcp -m tcp --dport 3922 -j ACCEPT"
    )


def test_a_positioned_rule_is_always_inserted_and_acls_go_before_the_last_rule() -> None:
    save = SAVE.replace(
        "COMMIT",
        ":ACL_INBOUND_eth2 - [0:0]\n-A ACL_INBOUND_eth2 -j ACCEPT\n-A ACL_INBOUND_eth2 -j DROP\nCOMMIT",
    )
    desired: list[csnetfilter.Desired] = [
        ("filter", 1, "-A INPUT -i lo -j ACCEPT"),
        ("filter", 7, "-A ACL_INBOUND_eth2 -p tcp -s 10.0.0.0/8 -j ACCEPT"),
    ]
    adds = [c.command for c in compare(save, desired) if c.kind == "add"]
    assert adds == [
        "iptables -t filter -I INPUT 1 -i lo -j ACCEPT",
        "iptables -t filter -I ACL_INBOUND_eth2 2 -p tcp -s 10.0.0.0/8 -j ACCEPT",
    ]


def test_rewrite_candidates_are_the_rules_no_desired_rule_equals() -> None:
    desired = [("filter", "", "-A INPUT -i lo -j ACCEPT"), ("", "front", "-A INPUT -j NETWORK_STATS")]
    left = csnetfilter.rewrite_candidates(SAVE, desired)
    assert [r.text for r in left] == SAVE.splitlines()[6:9]
    assert left[0].rebuilt("-C") == "iptables -t filter -C INPUT -m conntrack -j ACCEPT"


def test_the_lab_routers_handlers_keep_cloudstacks_base_rules() -> None:
    """Against the image's base rules as iptables-save shows them once loaded (protected by the role's
    file), the lab's handlers delete nothing; the base rules CsAddress does not want as they are are these
    (the netns test shows their rebuilt text names them)."""
    saved = ROUTER_SAVED
    settings = updateconfig.RouterSettings.from_cmdline(CMDLINE)
    desired = routerlab.router_rules(netlab.LabPlan(), settings)
    commands = compare(saved, desired, ROUTER_FILE)
    assert [c for c in commands if c.kind == "delete"] == []
    wanted = updateconfig.desired_rules([updateconfig.cs_address(settings)])
    left = [r.text for r in csnetfilter.rewrite_candidates(saved, wanted)]
    assert left == [
        "-A INPUT -i eth1 -m state --state RELATED,ESTABLISHED -j ACCEPT",
        "-A INPUT -i eth0 -p tcp -m tcp --dport 80 -m state --state NEW -j ACCEPT",
        "-A FW_EGRESS_RULES -j ACCEPT",
        "-A FW_OUTBOUND -j FW_EGRESS_RULES",
    ]


# ------------------------------------------------------------------------------------------ for real

needs_netns = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("iptables-restore") or not shutil.which("ip"),
    reason="needs root, iptables and iproute2 (a network namespace of the test's own)",
)


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        argv = ["ip", "netns", "exec", self.name, "sh", "-c", command]
        return subprocess.run(argv, capture_output=True, text=True, check=False)

    def restore(self, rules: str) -> None:
        done = self.run(f"printf %s {shlex.quote(rules)} | iptables-restore")
        assert done.returncode == 0, done.stderr

    def save(self) -> str:
        return self.run("iptables-save").stdout

    def apply(self, commands: list[Command]) -> dict[str, int]:
        """Each command run as CloudStack runs it (a failure does not stop the others): its exit status."""
        return {c.command: self.run(c.command).returncode for c in commands}


@pytest.fixture
def netns() -> Iterator[Netns]:
    name = f"svmt-nf-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield Netns(name)
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def rules_of(save: str) -> list[str]:
    return sorted(line for line in save.splitlines() if line.startswith("-A"))


@needs_netns
def test_the_conntrack_spelling_cannot_be_deleted_and_the_state_spelling_can(netns: Netns) -> None:
    netns.restore(f"*filter\n:INPUT ACCEPT [0:0]\n{CONNTRACK}\n{STATE}\nCOMMIT\n")
    deletes = compare(netns.save(), [], None)
    assert [c.command for c in deletes] == [
        "iptables -t filter -D INPUT -m conntrack -j ACCEPT",
        "iptables -t filter -D INPUT -i eth0 -m state --state RELATED,ESTABLISHED -j ACCEPT",
    ]
    assert list(netns.apply(deletes).values()) == [2, 0]
    assert rules_of(netns.save()) == [CONNTRACK]  # stuck: every later run tries again and fails again


@needs_netns
def test_the_lab_routers_rules_apply_on_cloudstacks_base_and_a_second_run_changes_nothing(
    netns: Netns,
) -> None:
    """The lab's handlers' rules (without the egress rule's ipset: no ipset on the host) through the model on
    the base rules in CloudStack's shape: every command succeeds but the chains that already exist; a
    second run re-adds only what CloudStack never sees as equal and deletes its older copy."""
    netns.restore(ROUTER_BASE)
    assert rules_of(netns.save()) == rules_of(ROUTER_SAVED)
    settings = updateconfig.RouterSettings.from_cmdline(CMDLINE)
    desired = routerlab.router_rules(netlab.LabPlan(), settings, without=["egress"])
    first = compare(netns.save(), desired, ROUTER_FILE)
    assert not [c for c in first if c.kind == "delete"]
    failed = [c for c, status in netns.apply(first).items() if status != 0]
    assert failed == [], failed
    after_first = netns.save()
    for rule in (
        "-A POSTROUTING -o eth2 -j SNAT --to-source 198.51.100.10",
        "-A FIREWALL_198.51.100.10 -j DROP",
        "-A FORWARD -i eth2 -o eth0 -p tcp -m tcp --dport 80 -m state --state NEW,ESTABLISHED -j ACCEPT",
        "-A PREROUTING -d 198.51.100.10/32 -i eth2 -p tcp -m tcp --dport 8080 -j DNAT "
        "--to-destination 10.1.1.11:80",
    ):
        assert rule in after_first
    second = compare(after_first, desired, ROUTER_FILE)
    assert [c for c, status in netns.apply(second).items() if status != 0] == []
    assert rules_of(netns.save()) == rules_of(after_first)
    readded = sorted(c.command for c in second if c.kind == "add")
    assert "iptables -t filter -P INPUT DROP" in readded and all(
        "-P " in c or "-I VPN_" in c or "FIREWALL_" in c or " -d 198.51.100.10 --dport" in c for c in readded
    ), readded


@needs_netns
def test_every_rule_the_images_boot_loads_can_be_rewritten_by_cloudstack(netns: Netns) -> None:
    """The image's boot rules in the kernel: each one CsAddress does not want as it is is named by its
    rebuilt text (``iptables -C``), as the rewrite check asks of a booted router."""
    netns.restore(ROUTER_BASE)
    settings = updateconfig.RouterSettings.from_cmdline(CMDLINE)
    wanted = updateconfig.desired_rules([updateconfig.cs_address(settings)])
    left = csnetfilter.rewrite_candidates(netns.save(), wanted)
    assert left and {r.text: netns.run(r.rebuilt("-C")).returncode for r in left} == {r.text: 0 for r in left}
