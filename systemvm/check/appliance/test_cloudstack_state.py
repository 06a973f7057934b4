"""CloudStack state.

The files and settings CloudStack 4.20's own scripts read after a boot: cmd_line.json in CloudStack's
shape, /etc/cloudstack/, the release line the version handshake parses, the resolver
order, forwarding on routers and the management network's route.
"""

from __future__ import annotations

import json
import re

import pytest

from systemvm import contract
from systemvm.check.appliance.target import run_ok

# CloudStack takes the third word of the release line and needs x.y.z[.a][-brand][-epoch][-SNAPSHOT]
RELEASE_VERSION = re.compile(r"^\d+\.\d+\.\d+(\.\d+)?(-[A-Za-z0-9]+)*$")


def test_cloudstack_config_directory_exists(host) -> None:
    """/etc/cloudstack/ exists (CloudStack's router scripts keep their data bags there)"""
    directory = host.file(contract.CLOUDSTACK_CONF_DIR)
    assert directory.is_directory, f"{contract.CLOUDSTACK_CONF_DIR} is missing or not a directory"


def test_release_line_parses_as_cloudstack_reads_it(host) -> None:
    """/etc/cloudstack-release reads as CloudStack's version handshake parses it"""
    release = host.file(contract.RELEASE_PATH)
    assert release.exists, f"{contract.RELEASE_PATH} is missing"
    text = release.content_string.strip()
    words = text.split()
    assert len(words) >= 3 and words[:2] == ["Cloudstack", "Release"], (
        f"{contract.RELEASE_PATH} says '{text}'; CloudStack expects 'Cloudstack Release <version> ...'"
    )
    assert RELEASE_VERSION.match(words[2]), f"'{words[2]}' is not a version CloudStack's parser accepts"
    assert "&" not in text, "an '&' in the release line breaks CloudStack's version reply (split on '&')"


@pytest.mark.live
def test_cmd_line_json_holds_the_command_line_in_cloudstacks_shape(host, params) -> None:
    """/var/cache/cloud/cmd_line.json holds every key sent, in CloudStack's shape"""
    document = host.file(contract.CMD_LINE_JSON_PATH)
    assert document.exists, f"{contract.CMD_LINE_JSON_PATH} is missing; update_config.py reads it"
    data = json.loads(document.content_string)
    assert data.get("type") == "cmdline", f"'type' is {data.get('type')!r}; CloudStack expects 'cmdline'"
    got = data.get("cmd_line")
    assert isinstance(got, dict), "'cmd_line' is not an object"
    non_strings = sorted(k for k, v in got.items() if not isinstance(v, str))
    assert not non_strings, f"values that are not strings: {', '.join(non_strings)}"
    sent = params.cmdline_args
    assert sent, "the harness passed no command line to compare"
    wrong = sorted(k for k in sent if got.get(k) != sent[k])
    assert not wrong, f"keys missing or changed in cmd_line.json: {', '.join(wrong)}"


@pytest.mark.live
@pytest.mark.applies(hypervisors=("kvm",))  # the KVM harness names the zone's DNS; the others send none
def test_internal_dns_is_the_first_resolver(host, params) -> None:
    """The zone's internal DNS (internaldns1) is the first resolver, the public ones follow"""
    sent = params.cmdline_args
    expected = []
    for key in ("internaldns1", "internaldns2", "dns1", "dns2", "ip6dns1", "ip6dns2"):
        if sent.get(key) and sent[key] not in expected:
            expected.append(sent[key])
    if not expected:
        pytest.skip("the command line names no DNS server")
    servers = [
        line.split()[1]
        for line in run_ok(host, "cat /etc/resolv.conf").splitlines()
        if line.startswith("nameserver ") and len(line.split()) > 1
    ]
    assert servers[: len(expected)] == expected, f"resolv.conf lists {servers}; expected {expected} first"


@pytest.mark.live
def test_routers_forward_and_other_roles_do_not(host, params) -> None:
    """IPv4 forwarding is on for routers (as CloudStack's sysctl.conf sets it) and off otherwise"""
    value = run_ok(host, f"cat {contract.IP_FORWARD_PATH}").strip()
    expected = "1" if params["role"] in contract.GUEST_FACING_ROLES else "0"
    assert value == expected, f"net.ipv4.ip_forward is {value} on a {params['role']}; expected {expected}"


@pytest.mark.live
@pytest.mark.applies(roles=contract.AGENT_ROLES, hypervisors=("kvm",))  # where the harness sends mgmtcidr
def test_management_network_is_routed_via_localgw(host, params) -> None:
    """mgmtcidr is routed via localgw on the management NIC"""
    sent = params.cmdline_args
    config = contract.read_config(sent, params.get("hypervisor", "kvm"))
    route = contract.management_route(config)
    if route is None:
        pytest.skip("the command line asks for no management route (no mgmtcidr/localgw, or a local one)")
    cidr, via, nic = route
    routes = run_ok(host, f"ip -4 route show {cidr}").split()
    assert routes[:1] == [cidr] and f"via {via} dev {nic}" in " ".join(routes), (
        f"ip route show {cidr}: '{' '.join(routes) or 'no route'}'; expected via {via} dev {nic}"
    )
