"""The network lab's pure parts: names, the address plan, the IPsec peer's files, the socket probe.
The lab itself (namespaces, taps, services) is tested for real in tests/e2e/test_netlab.py."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

from systemvm.lab import netlab, services


def test_prefixes_fit_interface_names_and_differ() -> None:
    prefixes = {netlab.new_prefix() for _ in range(50)}
    assert len(prefixes) > 40
    for prefix in prefixes:
        assert netlab._PREFIX_RE.match(prefix)
        assert len(f"{prefix}t99") <= 15  # IFNAMSIZ - 1


def test_only_lab_tap_names_are_the_labs() -> None:
    assert netlab._is_lab_link("nl3fa2t0", "nl3fa2")
    assert netlab._is_lab_link("nl3fa2t12", "nl")  # "nl" means every lab
    assert not netlab._is_lab_link("nl3fa2t0", "nl9999")
    assert not netlab._is_lab_link("eth0", "nl")
    assert not netlab._is_lab_link("nlbr0", "nl")  # not a tap's name


def test_a_bad_prefix_is_refused_before_anything_is_made() -> None:
    with pytest.raises(netlab.LabError), netlab.net_lab("Bad-Prefix"):
        pass
    with pytest.raises(netlab.LabError, match="at least two"):
        netlab.cleanup_leftovers("n")


def test_the_plan_puts_every_host_on_its_network() -> None:
    plan = netlab.LabPlan()
    hosts = netlab.lab_hosts(plan)
    assert [h.name for h in hosts] == ["client", "web1", "web2", "server"]
    for host in hosts:
        cidr = plan.guest_cidr if host.network == "guest" else plan.public_cidr
        assert ipaddress.ip_address(host.ip) in ipaddress.ip_network(cidr)
    assert {h.gateway for h in hosts if h.network == "guest"} == {plan.router_guest_ip}
    for address in (plan.router_public_ip, plan.storage_public_ip, plan.server_ip):
        assert ipaddress.ip_address(address) in ipaddress.ip_network(plan.public_cidr)
    assert ipaddress.ip_address(plan.site_ip) in ipaddress.ip_network(plan.site_cidr)


def test_the_ipsec_peer_files_name_the_plan_and_stay_off_the_hosts_config(tmp_path: Path) -> None:
    lab = netlab.NetLab("nltest", netlab.LabPlan(), tmp_path)
    strongswan_conf, swanctl_conf = services.ipsec_configs(lab, services.IpsecPeer(psk="s3cret"), tmp_path)
    settings = strongswan_conf.read_text()
    assert f"unix://{tmp_path}/charon.vici" in settings
    load = next(
        line for line in settings.splitlines() if line.strip().startswith("load =") and "kernel" in line
    )
    assert "stroke" not in load and "kernel-libipsec" in load  # stroke would read /etc/ipsec.secrets
    conns = swanctl_conf.read_text()
    for needle in ("local_addrs = 198.51.100.1", "remote_addrs = 198.51.100.10", "local_ts = 10.2.2.0/24",
                   "remote_ts = 10.1.1.0/24", "encap = yes", 'secret = "s3cret"'):  # fmt: skip
        assert needle in conns


def test_listening_sees_a_socket_of_this_process() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind(("127.0.0.1", 0))
        port = tcp.getsockname()[1]
        assert not netlab._listening(os.getpid(), port, "tcp")
        tcp.listen()
        assert netlab._listening(os.getpid(), port, "tcp")
        assert not netlab._listening(os.getpid(), port, "udp")
