"""A router's NICs on the network lab's taps: the NIC plan, the command line, QEMU's and libvirt's NICs, the
rules the traffic checks apply, and the suite's lab parameters (no VM, no namespace, no root)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lxml import etree

from systemvm import contract
from systemvm.boot import harness, testnet
from systemvm.boot.hypervisors import kvm
from systemvm.errors import UserError
from systemvm.lab import netlab, routerlab, updateconfig

LAB = testnet.LabNics(guest_tap="nl0001t0", public_tap="nl0001t1")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyForTests test"


def lab_plan() -> testnet.TestNetwork:
    return testnet.plan_test_network("router", "r-1-VM", 40023, lab=LAB)


def xml_of(network: testnet.TestNetwork, tmp_path: Path) -> etree._Element:
    spec = kvm.DomainSpec("svmt-abc123-r-1-VM", "qemu", tmp_path / "d.qcow2", tmp_path / "c.log", network)
    return etree.fromstring(kvm.domain_xml(spec).encode())


def test_a_lab_puts_eth0_and_eth2_on_taps_and_keeps_the_control_nic_user_mode() -> None:
    plan = lab_plan()
    assert [n.index for n in plan.nics] == [0, 1, 2]
    guest, control, public = plan.nics
    assert (guest.tap, guest.guest_ip, guest.netmask) == ("nl0001t0", "10.1.1.1", "255.255.255.0")
    assert (public.tap, public.guest_ip, public.netmask) == ("nl0001t1", "198.51.100.10", "255.255.255.0")
    assert (
        control.tap is None
        and control.forward_ssh
        and f"eth{control.index}" == contract.control_nic("router")
    )
    assert plan.taps == ["nl0001t0", "nl0001t1"] and plan.gateway == "198.51.100.1"
    assert len({n.mac for n in plan.nics}) == 3


def test_the_command_line_carries_the_labs_addresses_and_gateway() -> None:
    args = contract.parse_cmdline(testnet.boot_args(lab_plan(), "r-1-VM", KEY, 8250).to_cmdline())
    assert (args["eth0ip"], args["eth0mask"]) == ("10.1.1.1", "255.255.255.0")
    assert args["eth1ip"].startswith("169.254.")
    assert (args["eth2ip"], args["eth2mask"], args["gateway"]) == (
        "198.51.100.10",
        "255.255.255.0",
        "198.51.100.1",
    )
    assert args["nic_macs"] == contract.nic_macs_value([n.mac for n in lab_plan().nics])


def test_without_a_lab_the_plan_and_the_arguments_are_unchanged() -> None:
    plain = testnet.plan_test_network("router", "r-1-VM", 40023)
    assert len(plain.nics) == 2 and plain.gateway is None and plain.taps == []
    args = testnet.boot_args(plain, "r-1-VM", KEY, 8250)
    assert args.gateway is None and "eth2ip" not in args.to_cmdline()
    netdev = testnet.qemu_netdev_args(plain)
    assert [a for a in netdev if a.startswith("tap")] == []
    assert netdev[1].startswith("user,id=svmnet0,net=10.1.1.0/24,host=10.1.1.2,ipv6=off")


def test_a_lab_takes_a_router_a_storage_or_a_console_vm_only() -> None:
    with pytest.raises(ValueError, match="not a vpcrouter"):
        testnet.plan_test_network("vpcrouter", "r-1-VM", lab=LAB)
    with pytest.raises(ValueError, match="a secstorage in a lab has no guest tap"):
        testnet.plan_test_network("secstorage", "s-1-VM", lab=LAB)


def test_plain_qemu_opens_the_taps_by_name_in_nic_order() -> None:
    args = testnet.qemu_netdev_args(lab_plan())
    netdevs = args[1::4]
    assert netdevs[0] == "tap,id=svmnet0,ifname=nl0001t0,script=no,downscript=no"
    assert (
        netdevs[1].startswith("user,id=svmnet1,net=169.254.0.0/16")
        and "hostfwd=tcp:127.0.0.1:40023-" in netdevs[1]
    )
    assert netdevs[2] == "tap,id=svmnet2,ifname=nl0001t1,script=no,downscript=no"
    assert [a.split(",")[1] for a in args[3::4]] == ["netdev=svmnet0", "netdev=svmnet1", "netdev=svmnet2"]


def test_libvirt_has_the_taps_as_ethernet_interfaces_at_the_slots_of_their_nic(tmp_path: Path) -> None:
    plan = lab_plan()
    root = xml_of(plan, tmp_path)
    interfaces = root.findall("devices/interface")
    assert [i.get("type") for i in interfaces] == ["ethernet", "ethernet"]
    for iface, nic in zip(interfaces, (plan.nics[0], plan.nics[2]), strict=True):
        assert iface.find("mac").get("address") == nic.mac
        assert (iface.find("target").get("dev"), iface.find("target").get("managed")) == (nic.tap, "no")
        assert iface.find("model").get("type") == "virtio"
        assert iface.find("address").attrib == {
            "type": "pci", "domain": "0x0000", "bus": "0x00",
            "slot": f"{kvm.FIRST_NIC_SLOT + nic.index:#04x}", "function": "0x0",
        }  # fmt: skip
    args = [a.get("value") for a in root.iter(f"{{{kvm.QEMU_NS}}}arg")]
    assert not any(a.startswith("tap") for a in args), "libvirt opens the taps, not a -netdev"
    (device,) = [a for a in args if a.startswith("virtio-net-pci")]
    assert device.endswith(
        f"netdev=svmnet1,mac={plan.nics[1].mac},bus=pci.0,addr={kvm.FIRST_NIC_SLOT + 1:#04x}"
    )


def test_libvirt_xml_without_a_lab_is_as_before(tmp_path: Path) -> None:
    plan = testnet.plan_test_network("router", "r-1-VM", 40023)
    root = xml_of(plan, tmp_path)
    assert root.findall("devices/interface") == []
    args = [a.get("value") for a in root.iter(f"{{{kvm.QEMU_NS}}}arg")]
    assert args == kvm.pinned_nic_args(testnet.qemu_netdev_args(plan))


def test_the_kvm_plan_takes_the_lab_and_other_hypervisors_refuse_it() -> None:
    plan = harness.plan_boot("kvm", "router", "r-1-VM", KEY, 8250, LAB)
    assert plan.network is not None and plan.network.taps == ["nl0001t0", "nl0001t1"]
    assert plan.boot_args.gateway == "198.51.100.1"
    with pytest.raises(UserError, match="KVM only"):
        harness.plan_boot("xenserver", "router", "r-1-VM", KEY, 8250, LAB)


def test_the_lab_takes_only_a_kvm_router_storage_or_console_vm(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="takes a KVM router, secstorage, consoleproxy, not a dhcpsrvr"):
        request = harness.VmRequest("kvm", "amd64", "dhcpsrvr", lab=object(), artifacts=tmp_path)  # type: ignore[arg-type]
        with harness.boot_system_vm(request):
            pass


def lab_settings() -> updateconfig.RouterSettings:
    return updateconfig.RouterSettings.from_cmdline(
        testnet.boot_args(lab_plan(), "r-1-VM", KEY, 8250).to_cmdline()
    )


def rule_texts(rules: list[tuple[str, object, str]]) -> str:
    return "\n".join(f"{table or 'filter'} {rule}" for table, _, rule in rules)


def test_the_rules_hold_snat_dnat_and_the_egress_rule() -> None:
    rules = rule_texts(routerlab.router_rules(netlab.LabPlan(), lab_settings()))
    assert "nat -A POSTROUTING -o eth2 -j SNAT --to-source 198.51.100.10" in rules
    assert "-i eth2 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.1.1.11:80" in rules
    assert "filter  -I FW_EGRESS_RULES -m set --match-set destCidrIpset-3 dst  -j DROP" in rules
    assert "filter  -A FW_EGRESS_RULES -j ACCEPT" in rules
    assert "ip_forward" not in rules


@pytest.mark.parametrize(
    ("group", "gone"),
    [
        ("snat", "nat -A POSTROUTING -o eth2 -j SNAT"),
        ("dnat", "-j DNAT"),
        ("egress", "--match-set destCidrIpset-3 dst  -j DROP"),
        ("lb-input", "-d 198.51.100.10 --dport 8082 -m state"),
        ("dnat-forward", "--dport 80 -m state --state NEW,ESTABLISHED"),
        ("ingress", "--dport 8080  -j ACCEPT"),
    ],
)
def test_a_rule_group_can_be_left_out(group: str, gone: str) -> None:
    full = rule_texts(routerlab.router_rules(netlab.LabPlan(), lab_settings()))
    text = rule_texts(routerlab.router_rules(netlab.LabPlan(), lab_settings(), without={group}))
    assert gone in full and gone not in text
    assert len(full.splitlines()) > len(text.splitlines())
    with pytest.raises(ValueError, match="unknown rule groups"):
        routerlab.router_rules(netlab.LabPlan(), lab_settings(), without={"nope"})


def test_lab_params_are_json_with_the_namespaces_and_logs(tmp_path: Path) -> None:
    lab = netlab.NetLab("nl0001", netlab.LabPlan(), tmp_path)

    def service(name: str, host: str) -> netlab.Service:
        return netlab.Service(name, lab.netns(host), None, tmp_path / f"{name}.log",  # type: ignore[arg-type]
                              lab.hosts[host].ip, 80, tmp_path / f"{name}.access.log")  # fmt: skip

    peer = service("ipsec", "server")
    peer.files["strongswan.conf"] = tmp_path / "ipsec" / "strongswan.conf"
    router = routerlab.RouterLab(lab, service("public-http", "server"), [service("web1", "web1")], peer)
    params = json.loads(json.dumps(router.params(["nl0001t0", "nl0001t1"])))
    assert params["netns"]["client"] == "nl0001-client" and params["netns"]["server"] == "nl0001-server"
    assert params["public_http"]["access_log"] == str(tmp_path / "public-http.access.log")
    assert params["backends"]["web1"]["ip"] == "10.1.1.11"
    assert params["plan"]["router_public_ip"] == "198.51.100.10"
    assert (params["blocked"], params["allowed"]) == ("10.2.2.1", "198.51.100.1")
    assert params["without"] == [] and params["vpn"]["without"] == []
    assert params["switches"] == {"guest": "nl0001-guest-sw", "public": "nl0001-public-sw"}
    assert params["load_balancer"]["backends"] == ["web1", "web2"]
    assert (params["load_balancer"]["balance"], params["load_balancer"]["health_checks"]) == (
        "roundrobin",
        True,
    )
    assert [e["host"] for e in params["dhcp"]["entries"]] == ["client", "web1"]
    assert routerlab.plan_of(params) == netlab.LabPlan()
    vpn = params["vpn"]
    conf = str(tmp_path / "ipsec/strongswan.conf")
    assert vpn["peer"] == {"netns": "nl0001-server", "strongswan_conf": conf}
    assert set(vpn["tunnels"]) == {"ikev1", "ikev2"} and vpn["target"] == "10.2.2.2"
    assert vpn["status"] == "ipsec status vpn-198.51.100.1"


def test_the_load_balancer_listens_on_the_public_address_over_both_backends() -> None:
    config = routerlab.haproxy_config(netlab.LabPlan())
    listen = config[config.index("listen 198_51_100_10-8082") :]
    assert "\tbind 198.51.100.10:8082\n" in listen and "\tbalance roundrobin\n" in listen
    servers = [line.split() for line in listen.splitlines() if line.startswith("\tserver ")]
    assert servers == [
        ["server", "198_51_100_10-8082_0", "10.1.1.11:80", "check"],
        ["server", "198_51_100_10-8082_1", "10.1.1.12:80", "check"],
    ]
    rules = rule_texts(routerlab.router_rules(netlab.LabPlan(), lab_settings()))
    assert (
        "filter -A INPUT -p tcp -m tcp -d 198.51.100.10 --dport 8082 -m state --state NEW -j ACCEPT" in rules
    )


def test_haproxy_config_is_the_management_servers_rendering() -> None:
    """HAProxyConfigurator's defaults: the global and defaults sections, the statistics listener on the
    public address (port 8081, its URI and credentials), the rule's listen section, ``\\t `` blank lines."""
    lines = routerlab.haproxy_config(netlab.LabPlan()).split("\n")
    assert lines[:11] == [
        "global", "\tlog 127.0.0.1:3914   local0 warning", "\tmaxconn 4096", "\tmaxpipes 1024",
        "\tchroot /var/lib/haproxy", "\tuser haproxy", "\tgroup haproxy",
        "\tstats socket /run/haproxy/admin.sock", "\tdaemon", "\ttune.ssl.default-dh-param 2048", "\t ",
    ]  # fmt: skip
    assert lines[11:23] == [
        "defaults", "\tlog     global", "\tmode    tcp", "\toption  dontlognull", "\tretries 3",
        "\toption redispatch", "\toption forwardfor", "\toption httpclose", "\ttimeout connect    5000",
        "\ttimeout client     50000", "\ttimeout server     50000", "",
    ]  # fmt: skip
    assert lines[23:32] == [
        "listen stats_on_public", "\tbind 198.51.100.10:8081", "\tmode http", "\toption httpclose",
        "\tstats enable", "\tstats uri     /admin?stats", "\tstats realm   Haproxy\\ Statistics",
        "\tstats auth    admin1:AdMiN123", "",
    ]  # fmt: skip
    assert lines[32:] == [
        "\t ", "listen 198_51_100_10-8082", "\tbind 198.51.100.10:8082", "\tbalance roundrobin",
        "\tserver 198_51_100_10-8082_0 10.1.1.11:80 check",
        "\tserver 198_51_100_10-8082_1 10.1.1.12:80 check",
        "\t ", "\t ", "",
    ]  # fmt: skip


def test_a_can_fail_configuration_changes_only_what_it_names() -> None:
    plan = netlab.LabPlan()
    good = routerlab.haproxy_config(plan)
    by_source = routerlab.haproxy_config(plan, balance="source")
    unchecked = routerlab.haproxy_config(plan, health_checks=False)
    assert by_source == good.replace("balance roundrobin", "balance source")
    servers = [line for line in unchecked.splitlines() if line.startswith("\tserver ")]
    assert len(servers) == 2 and not any("check" in line for line in servers)


def test_a_tunnel_is_cloudstacks_conn_with_its_default_proposal_and_secret() -> None:
    plan = netlab.LabPlan()
    for version, proposal in (("ikev1", "aes128-sha1-modp1536"), ("ikev2", "aes256-sha256-modp2048")):
        files = routerlab.ipsec_files(plan, version)
        conn = files["/etc/ipsec.d/ipsec.vpn-198.51.100.1.conf"].splitlines()
        assert "conn vpn-198.51.100.1" in conn and f" keyexchange={version}" in conn
        assert f" ike={proposal}" in conn and f" esp={proposal}" in conn and " auto=start" in conn
        assert " left=198.51.100.10" in conn and " leftsubnet=10.1.1.0/24" in conn
        assert " right=198.51.100.1" in conn and " rightsubnet=10.2.2.0/24" in conn
        secret = files["/etc/ipsec.d/ipsec.vpn-198.51.100.1.secrets"]
        assert secret == f'198.51.100.10 198.51.100.1 : PSK "{routerlab.VPN_PSK}"\n'
        assert "include /etc/ipsec.d/*.conf" in files["/etc/ipsec.conf"]
        assert "include /etc/ipsec.d/ipsec.*.secrets" in files["/etc/ipsec.secrets"]
    with pytest.raises(ValueError, match="unknown IKE version"):
        routerlab.ipsec_files(plan, "ikev3")


def test_the_peer_answers_either_version_with_every_tunnels_proposal() -> None:
    peer = routerlab.vpn_peer()
    assert peer.ike_version == 0 and peer.psk == routerlab.VPN_PSK
    assert peer.ike_proposals.split(",") == ["aes128-sha1-modp1536", "aes256-sha256-modp2048"]
    assert peer.esp_proposals == peer.ike_proposals


def test_the_tunnel_is_exempt_from_source_nat_and_a_wrong_psk_changes_only_the_secret() -> None:
    plan = netlab.LabPlan()
    rules = routerlab.vpn_rules(plan)
    assert {(r.table, r.position, r.rule) for r in rules if r.group == "vpn-nat-exempt"} >= {
        ("nat", "front", "-A POSTROUTING -t nat -o eth2 -m mark --mark 0x525 -j ACCEPT"),
        ("mangle", "front", "-A FORWARD -s 10.1.1.0/24 -d 10.2.2.0/24 -j MARK --set-xmark 0x525/0xffffffff"),
    }
    assert (
        "",
        "front",
        "-A INPUT -i eth2 -p udp -m udp --dport 4500 -s 198.51.100.1 -d 198.51.100.10 -j ACCEPT",
    ) in {(r.table, r.position, r.rule) for r in rules if r.group == "vpn-input"}
    handlers = routerlab.vpn_handlers(plan, lab_settings())
    assert [h.handler for h in handlers] == ["CsAddress", "CsAcl", "CsForwardingRules", "CsSite2SiteVpn"]
    exempt = [
        rule for _, _, rule in updateconfig.desired_rules(handlers, {"vpn-nat-exempt"}) if "0x52" in rule
    ]
    assert exempt == []
    good, bad = routerlab.vpn_up_commands(plan, "ikev2"), routerlab.vpn_up_commands(plan, "ikev2", psk="nope")
    assert [a == b for a, b in zip(good, bad, strict=True)].count(False) == 1
    assert good[-3:] == [
        "ipsec rereadsecrets",
        "ipsec reload",
        "chmod 400 /etc/ipsec.d/ipsec.vpn-198.51.100.1.secrets",
    ]


def test_vpn_is_up_needs_the_ike_sa_and_the_child_sa() -> None:
    up = (
        "vpn-198.51.100.1[1]: ESTABLISHED 2 seconds ago, 198.51.100.10[198.51.100.10]...198.51.100.1\n"
        "vpn-198.51.100.1{1}:  INSTALLED, TUNNEL, reqid 1, ESP in UDP SPIs: c1_i c2_o\n"
    )
    assert routerlab.vpn_is_up(up)
    assert not routerlab.vpn_is_up(up.splitlines()[0])
    assert not routerlab.vpn_is_up("vpn-198.51.100.1[1]: CONNECTING, 198.51.100.10...198.51.100.1")


def test_charon_answers_only_when_ipsec_status_lists_security_associations() -> None:
    assert routerlab.charon_answers("Security Associations (0 up, 0 connecting):\n  none\n")
    # the starter runs, charon's socket is not open yet: `ipsec status` exits 0 and prints only this
    assert not routerlab.charon_answers("connecting to 'unix:///var/run/charon.ctl' failed: No such file\n")
    assert not routerlab.charon_answers("")
