"""iptables.

Policies DROP, 3922 only on the control interface, established traffic accepted, the role's ports open,
and the rules persisted in /etc/iptables/rules.v4.
"""

from __future__ import annotations

import pytest

from systemvm.check.appliance.target import (
    normalized_rule,
    parse_policies,
    parse_rules,
    rules_accepting,
    run_ok,
)
from systemvm.contract import ROLE_PORTS, SSH_PORT

RULES_FILE = "/etc/iptables/rules.v4"
UDP_PORTS = (53, 67)  # DNS and DHCP may be opened for UDP only


def _live(host) -> str:
    return run_ok(host, "iptables -S")


@pytest.mark.live
def test_input_and_forward_policies_are_drop(host) -> None:
    """INPUT and FORWARD policies are DROP"""
    policies = parse_policies(_live(host))
    wrong = {c: policies.get(c) for c in ("INPUT", "FORWARD") if policies.get(c) != "DROP"}
    assert not wrong, ", ".join(f"{chain} policy is {policy}" for chain, policy in wrong.items())


def _check_3922_only_on_control(rules_text: str, control: str) -> None:
    accepting = rules_accepting(parse_rules(rules_text), SSH_PORT)
    elsewhere = [r["text"] for r in accepting if r.get("-i") not in (control, "lo")]
    assert not elsewhere, f"3922 accepted beyond {control}: {elsewhere}"
    assert any(r.get("-i") == control for r in accepting), f"no rule accepts 3922 on {control}"


@pytest.mark.live
def test_3922_is_accepted_on_the_control_interface_only(host, params) -> None:
    """3922 is accepted on the control interface only"""
    _check_3922_only_on_control(_live(host), params.control_nic)


@pytest.mark.live
def test_established_traffic_is_accepted(host) -> None:
    """Established traffic is accepted"""
    rules = parse_rules(_live(host))
    established = [
        r
        for r in rules
        if r.get("-j") == "ACCEPT" and "ESTABLISHED" in (r.get("--ctstate", "") + r.get("--state", ""))
    ]
    assert established, "no INPUT rule accepts ESTABLISHED traffic"


@pytest.mark.live
def test_the_roles_ports_are_open(host, params) -> None:
    """The role's service ports are accepted (a router's DNS from its guest network only)"""
    rules = [r for r in parse_rules(_live(host)) if r.get("-i") != "lo"]  # loopback accepts everything
    closed = []
    for port in ROLE_PORTS[params["role"]]:
        protocols = ("tcp", "udp") if port in UDP_PORTS else ("tcp",)
        if not rules_accepting(rules, port, protocols, some_sources=True):
            closed.append(port)
    assert not closed, f"ports of the {params['role']} role not accepted: {closed}"


@pytest.mark.live
def test_the_rules_are_persisted_in_rules_v4(host, params) -> None:
    """The rules are persisted in /etc/iptables/rules.v4"""
    saved_file = host.file(RULES_FILE)
    assert saved_file.exists, f"{RULES_FILE} is missing"
    saved = saved_file.content_string
    policies = parse_policies(saved)
    wrong = {c: policies.get(c) for c in ("INPUT", "FORWARD") if policies.get(c) != "DROP"}
    assert not wrong, f"{RULES_FILE}: " + ", ".join(f"{c} policy {p}" for c, p in wrong.items())
    _check_3922_only_on_control(saved, params.control_nic)
    live_inputs = {normalized_rule(r) for r in parse_rules(_live(host))}
    not_loaded = [r["text"] for r in parse_rules(saved) if normalized_rule(r) not in live_inputs]
    assert not not_loaded, f"rules in {RULES_FILE} that are not loaded: {not_loaded}"
