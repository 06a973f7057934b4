"""Per-role iptables rules (contract.firewall_rules_v4/v6), loaded into real netfilter in a private netns,
and the rules systemvm.guest.firewall saves."""

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


@needs_netfilter
@pytest.mark.parametrize("role", contract.ROLES)
def test_role_rules_load_into_netfilter_unchanged(role, tmp_path):
    control = contract.control_nic(role)
    v4 = contract.firewall_rules_v4(role, control, ("eth0", "eth1"))
    saved_v4, saved_v6 = load_and_save(v4, contract.firewall_rules_v6(), tmp_path)
    assert rules(saved_v4) == rules(v4)
    assert rules(saved_v6) == rules(contract.firewall_rules_v6())


@pytest.mark.parametrize("role", contract.ROLES)
def test_policies_drop_and_ssh_only_on_the_control_nic(role):
    control = contract.control_nic(role)
    v4 = contract.firewall_rules_v4(role, control, ("eth0", "eth1"))
    assert ":INPUT DROP [0:0]" in v4 and ":FORWARD DROP [0:0]" in v4
    ssh = [line for line in v4.splitlines() if f"--dport {contract.SSH_PORT}" in line]
    assert ssh == [f"-A INPUT -i {control} -p tcp -m tcp --dport 3922 -j ACCEPT"]
    assert "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT" in v4
    assert "--dport 22 " not in v4
    for port in contract.ROLE_PORTS[role]:
        assert f"-p tcp -m tcp --dport {port} -j ACCEPT" in v4
    for port in contract.ROLE_UDP_PORTS[role]:
        assert f"-p udp -m udp --dport {port} -j ACCEPT" in v4


def test_router_ports_face_the_guest_network_only():
    v4 = contract.firewall_rules_v4("router", "eth1", ("eth0", "eth1"))
    assert "-A INPUT ! -i eth1 -p udp -m udp --dport 53 -j ACCEPT" in v4
    assert "-A FORWARD -i eth0 ! -o eth1 -j ACCEPT" in v4
    storage = contract.firewall_rules_v4("secstorage", "eth0", ("eth0",))
    assert "-A INPUT -p tcp -m tcp --dport 443 -j ACCEPT" in storage
    assert "-A FORWARD -i" not in storage


def test_no_role_opens_only_ssh():
    v4 = contract.firewall_rules_v4(None, "eth0")
    accepted = [line for line in v4.splitlines() if "--dport" in line]
    assert accepted == ["-A INPUT -i eth0 -p tcp -m tcp --dport 3922 -j ACCEPT"]


def test_the_image_is_built_with_the_no_role_rules(tmp_path):
    """systemvm-firewall's install step: an image no command line configured accepts SSH on eth0 only."""
    firewall.write_default_rules(Guest(tmp_path, echo=False))
    v4 = (tmp_path / contract.RULES_V4_PATH.lstrip("/")).read_text()
    assert v4 == contract.firewall_rules_v4(None, "eth0")
    assert (tmp_path / contract.RULES_V6_PATH.lstrip("/")).read_text() == contract.firewall_rules_v6()
    assert oct((tmp_path / contract.RULES_V4_PATH.lstrip("/")).stat().st_mode & 0o777) == "0o644"
