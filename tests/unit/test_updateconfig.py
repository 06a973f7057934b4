"""The model of CloudStack's update_config.py handlers (systemvm.lab.updateconfig): each handler's exact
files, commands and rules for a plain router, each fact of the research notes (cs-420-router-facts.md)
checked."""

from __future__ import annotations

import pytest

from systemvm.lab import updateconfig
from systemvm.lab.updateconfig import CsFileText, DhcpEntry, FwRule, RouterSettings

CMDLINE = (
    "template=domP type=router name=r-4-VM eth0ip=10.1.1.1 eth0mask=255.255.255.0 eth1ip=169.254.3.4 "
    "eth1mask=255.255.0.0 eth2ip=198.51.100.10 eth2mask=255.255.255.0 gateway=198.51.100.1 "
    "domain=cs1cloud.internal dns1=8.8.8.8 dns2=8.8.4.4 localgw=169.254.0.1"
)
SETTINGS = RouterSettings.from_cmdline(CMDLINE)
CLIENT = DhcpEntry("52:54:00:aa:bb:01", "10.1.1.20", "client-vm", default_gateway="10.1.1.1")
WEB1 = DhcpEntry("52:54:00:aa:bb:02", "10.1.1.11", "web1-vm", default_gateway="10.1.1.1")


def texts(rules: list[FwRule]) -> list[tuple[str, object, str]]:
    return [(r.table, r.position, r.rule) for r in rules]


def test_the_settings_are_the_command_lines_router_layout() -> None:
    assert [(i.device, i.nw_type, i.network) for i in SETTINGS.interfaces] == [
        ("eth0", "guest", "10.1.1.0/24"), ("eth1", "control", "169.254.0.0/16"),
        ("eth2", "public", "198.51.100.0/24"),
    ]  # fmt: skip
    assert (
        SETTINGS.public.gateway == "198.51.100.1" and SETTINGS.interface("control").gateway == "169.254.0.1"
    )
    assert (SETTINGS.role, SETTINGS.name, SETTINGS.domain) == ("router", "r-4-VM", "cs1cloud.internal")
    assert SETTINGS.guest_dns() == ["10.1.1.1", "8.8.8.8", "8.8.4.4"]
    assert SETTINGS.by_ip("198.51.100.77").device == "eth2"
    bare = RouterSettings.from_cmdline(
        "type=router eth0ip=10.1.1.1 eth0mask=255.255.255.0 useextdns=true dns1=1.1.1.1"
    )
    assert bare.domain == "cloudnine.internal" and bare.guest_dns() == ["1.1.1.1"]


# ------------------------------------------------------------------------------------------ CsAddress


def test_cs_address_walks_the_devices_with_fw_router_and_the_control_rules() -> None:
    out = updateconfig.cs_address(SETTINGS)
    assert (out.handler, out.files, out.commands) == ("CsAddress", {}, [])
    rules = texts(out.rules)
    control = texts(updateconfig.setup_router_control())
    guest = texts(updateconfig.fw_router(SETTINGS, SETTINGS.guest))
    public = texts(updateconfig.fw_router(SETTINGS, SETTINGS.public))
    set_mark = (
        "mangle",
        "",
        "-A PREROUTING -i eth2 -m state --state NEW -j CONNMARK --set-xmark 0x66/0xffffffff",
    )
    # eth0: fw_router then the control rules; eth1: the control rules only; eth2: set_mark, fw_router, control
    assert rules == [*guest, *control, *control, set_mark, *public, *control]
    assert control == [
        ("filter", "", "-A FW_OUTBOUND -m state --state RELATED,ESTABLISHED -j ACCEPT"),
        (
            "filter",
            "",
            "-A INPUT -i eth1 -p tcp -m tcp --dport 3922 -m state --state NEW,ESTABLISHED -j ACCEPT",
        ),
        ("filter", "", "-P INPUT DROP"),
        ("filter", "", "-P FORWARD DROP"),
    ]


def test_fw_router_for_the_guest_address() -> None:
    rules = texts(updateconfig.fw_router(SETTINGS, SETTINGS.guest))
    assert rules == [
        ("mangle", "front", "-A PREROUTING -m state --state RELATED,ESTABLISHED -j CONNMARK --restore-mark "
                            "--nfmask 0xffffffff --ctmask 0xffffffff"),
        ("mangle", "front", "-A POSTROUTING -p udp -m udp --dport 68 -j CHECKSUM --checksum-fill"),
        ("filter", "", "-A INPUT -d 224.0.0.18/32 -j ACCEPT"),
        ("filter", "", "-A INPUT -d 225.0.0.50/32 -j ACCEPT"),
        ("filter", "", "-A INPUT -i eth0 -m state --state RELATED,ESTABLISHED -j ACCEPT"),
        ("filter", "", "-A INPUT -p icmp -j ACCEPT"),
        ("filter", "", "-A INPUT -i lo -j ACCEPT"),
        ("filter", "", "-A INPUT -i eth0 -p udp -m udp --dport 67 -j ACCEPT"),
        ("filter", "", "-A INPUT -i eth0 -p udp -m udp --dport 53 -s 10.1.1.0/24 -j ACCEPT"),
        ("filter", "", "-A INPUT -i eth0 -p tcp -m tcp --dport 53 -s 10.1.1.0/24 -j ACCEPT"),
        ("filter", "", "-A INPUT -i eth0 -p tcp -m tcp --dport 80 -s 10.1.1.0/24 -m state --state NEW "
                       "-j ACCEPT"),
        ("filter", "", "-A INPUT -i eth0 -p tcp -m tcp --dport 8080 -s 10.1.1.0/24 -m state --state NEW "
                       "-j ACCEPT"),
        ("filter", "", "-A FORWARD -i eth0 -o eth1 -m state --state RELATED,ESTABLISHED -j ACCEPT"),
        ("filter", "", "-A FORWARD -i eth0 -o eth0 -m state --state NEW -j ACCEPT"),
        ("filter", "", "-A FORWARD -i eth0 -o eth0 -m state --state RELATED,ESTABLISHED -j ACCEPT"),
        ("", "front", "-A FORWARD -j NETWORK_STATS"),
        ("", "front", "-A INPUT -j NETWORK_STATS"),
        ("", "front", "-A OUTPUT -j NETWORK_STATS"),
        ("", "", "-A NETWORK_STATS -i eth0 -o eth2"),
        ("", "", "-A NETWORK_STATS -i eth2 -o eth0"),
        ("", "", "-A NETWORK_STATS -o eth2 ! -i eth0 -p tcp"),
        ("", "", "-A NETWORK_STATS -i eth2 ! -o eth0 -p tcp"),
    ]  # fmt: skip


def test_fw_router_for_the_public_address_has_the_source_nat_and_its_firewall_chains() -> None:
    rules = updateconfig.fw_router(SETTINGS, SETTINGS.public)
    public = texts(rules)[2:12]
    assert public == [
        ("mangle", "front", "-A PREROUTING -d 198.51.100.10/32 -j VPN_198.51.100.10"),
        ("mangle", "front", "-A PREROUTING -d 198.51.100.10/32 -j FIREWALL_198.51.100.10"),
        ("mangle", "front", "-A FIREWALL_198.51.100.10 -m state --state RELATED,ESTABLISHED -j ACCEPT"),
        ("mangle", "", "-A FIREWALL_198.51.100.10 -j DROP"),
        ("mangle", "", "-I VPN_198.51.100.10 -m state --state RELATED,ESTABLISHED -j ACCEPT"),
        ("mangle", "", "-A VPN_198.51.100.10 -j RETURN"),
        ("nat", "", "-A POSTROUTING -o eth2 -j SNAT --to-source 198.51.100.10"),
        ("mangle", "", "-A PREROUTING -i eth2 -m state --state NEW -j CONNMARK --set-xmark 0x66/0xffffffff"),
        ("filter", "", "-A FORWARD -i eth2 -o eth0 -m state --state RELATED,ESTABLISHED -j ACCEPT"),
        ("filter", "", "-A FORWARD -i eth0 -o eth2 -j FW_OUTBOUND"),
    ]
    assert [r.group for r in rules if "SNAT" in r.rule] == ["snat"]
    assert "-A INPUT -i eth2 -m state --state RELATED,ESTABLISHED -j ACCEPT" in [r.rule for r in rules]
    assert not any("--dport 67" in r.rule for r in rules)  # DHCP and DNS face the guest network only


# ------------------------------------------------------------------------------------------ CsApache


def test_cs_apache_writes_the_guest_addresss_vhost_restarts_and_opens_80_and_443() -> None:
    out = updateconfig.cs_apache(SETTINGS)
    assert list(out.files) == ["/etc/apache2/sites-enabled/vhost-10.1.1.1.conf"]
    assert out.commands == ["systemctl restart apache2"] and out.services == ("apache2",)
    assert texts(out.rules) == [
        (
            "",
            "front",
            "-A INPUT -i eth0 -d 10.1.1.1/32 -p tcp -m tcp -m state --state NEW --dport 80 -j ACCEPT",
        ),
        (
            "",
            "front",
            "-A INPUT -i eth0 -d 10.1.1.1/32 -p tcp -m tcp -m state --state NEW --dport 443 -j ACCEPT",
        ),
    ]
    lines = out.files["/etc/apache2/sites-enabled/vhost-10.1.1.1.conf"].splitlines()
    assert lines[0] == "<VirtualHost 10.1.1.1:80>"
    assert lines[lines.index("<IfModule mod_ssl.c>") + 1] == "\t<VirtualHost 10.1.1.1:443>"
    assert lines.count("\tServerName router.cs1cloud.internal") == 2
    assert lines.count("\tDocumentRoot /var/www/html") == 2 and lines.count("</VirtualHost>") == 2
    assert [line.strip() for line in lines if "Listen" in line] == [
        "Listen 10.1.1.1:80", "Listen 10.1.1.1:443", "Listen 10.1.1.1:443",
    ]  # fmt: skip
    assert lines[-3:] == ["<IfModule mod_gnutls.c>", "    Listen 10.1.1.1:443", "</IfModule>"]
    assert "\tSSLCertificateFile    /etc/ssl/certs/ssl-cert-snakeoil.pem" in lines
    assert "\tSSLCertificateKeyFile /etc/ssl/private/ssl-cert-snakeoil.key" in lines
    assert not any(":8180" in line or ":8443" in line or "*:80" in line for line in lines)


# ------------------------------------------------------------------------------------------ CsDhcp


def test_cs_dhcp_on_a_router_whose_files_are_missing() -> None:
    out = updateconfig.cs_dhcp(SETTINGS, [CLIENT, WEB1])
    assert out.handler == "CsDhcp" and out.services == ("dnsmasq",)
    assert out.files == {
        "/etc/dnsmasq.d/cloud.conf": (
            "dhcp-range=set:interface-eth0-0,10.1.1.1,static\n"
            "dhcp-option=tag:interface-eth0-0,15,cs1cloud.internal\n"
            "dhcp-option=tag:interface-eth0-0,6,10.1.1.1,8.8.8.8,8.8.4.4\n"
            "dhcp-option=tag:interface-eth0-0,3,10.1.1.1\n"
            "dhcp-option=tag:interface-eth0-0,1,255.255.255.0\n"
            "listen-address=127.0.0.1,10.1.1.1\n"
        ),
        "/etc/dhcphosts.txt": (
            "52:54:00:aa:bb:01,10.1.1.20,client-vm,infinite\n52:54:00:aa:bb:02,10.1.1.11,web1-vm,infinite\n"
        ),
        "/var/lib/misc/dnsmasq.leases": (
            "0 52:54:00:aa:bb:01 10.1.1.20 client-vm *\n0 52:54:00:aa:bb:02 10.1.1.11 web1-vm *\n"
        ),
        "/etc/hosts": (
            "127.0.0.1\tlocalhost\n127.0.1.1\tr-4-VM\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            "ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n10.1.1.1\tr-4-VM data-server\n"
            "10.1.1.20\tclient-vm\n10.1.1.11\tweb1-vm\n"
        ),
    }  # dhcpopts.txt: empty before and after, so not written
    assert out.commands == ["systemctl restart dnsmasq"]


def test_cs_dhcp_edits_cloud_conf_in_place_after_cloudstacks_boot() -> None:
    """After CloudStack's boot CsDhcp left ``listen-address=127.0.0.1`` alone in cloud.conf: that line is
    rewritten where it is, the rest appended; a comment line is left alone."""
    previous = {
        updateconfig.DHCP_CLOUD_CONF: "listen-address=127.0.0.1\n#dhcp-range=set:interface-eth0-0,x\n"
    }
    conf = updateconfig.cs_dhcp(SETTINGS, [CLIENT], previous).files[updateconfig.DHCP_CLOUD_CONF].splitlines()
    assert conf[:3] == [
        "listen-address=127.0.0.1,10.1.1.1", "#dhcp-range=set:interface-eth0-0,x",
        "dhcp-range=set:interface-eth0-0,10.1.1.1,static",
    ]  # fmt: skip


def test_cs_dhcp_tags_a_second_nics_entry_and_releases_a_stale_lease() -> None:
    second = DhcpEntry(
        "52:54:00:aa:bb:03", "10.1.1.30", "vm-nic2", default_entry=False, default_gateway="10.1.1.1"
    )
    previous = {updateconfig.DHCP_LEASES: "1700000000 52:54:00:de:ad:00 10.1.1.99 gone *\n"}
    out = updateconfig.cs_dhcp(SETTINGS, [second], previous)
    assert out.files["/etc/dhcphosts.txt"] == "52:54:00:aa:bb:03,set:10_1_1_30,10.1.1.30,vm-nic2,infinite\n"
    assert out.files["/etc/dhcpopts.txt"] == "10_1_1_30,3\n10_1_1_30,6\n10_1_1_30,15\n"
    assert out.files[updateconfig.DHCP_LEASES].splitlines() == [
        "1700000000 52:54:00:de:ad:00 10.1.1.99 gone *", "0 52:54:00:aa:bb:03 10.1.1.30 vm-nic2 *",
    ]  # fmt: skip
    release, restart = out.commands
    assert release.startswith('dhcp_release "$(ip route get 10.1.1.99 ') and release.endswith(
        '" 10.1.1.99 52:54:00:de:ad:00'
    )
    assert restart == "systemctl restart dnsmasq"


def test_cs_dhcp_unchanged_reloads_and_a_removed_entry_is_not_served() -> None:
    first = updateconfig.cs_dhcp(SETTINGS, [CLIENT])
    again = updateconfig.cs_dhcp(SETTINGS, [CLIENT], first.files)
    assert again.files == {}
    assert again.commands == [
        "systemctl is-active -q dnsmasq || systemctl start dnsmasq",
        "systemctl reload dnsmasq",
    ]
    gone = DhcpEntry(CLIENT.mac_address, CLIENT.ipv4_address, CLIENT.host_name, remove=True)
    out = updateconfig.cs_dhcp(SETTINGS, [gone])
    assert out.files[updateconfig.DHCP_CLOUD_CONF] == "listen-address=127.0.0.1\n"  # no device serves DHCP
    assert "client-vm" not in out.files["/etc/hosts"]


# ------------------------------------------------------------------------------------------ CsAcl

FIREWALL = [
    {"id": 1, "traffic_type": "Ingress", "protocol": "tcp", "src_ip": "198.51.100.10",
     "source_cidr_list": ["0.0.0.0/0", "10.9.0.0/16"], "src_port_range": [8080, 8080], "group": "ingress"},
    {"id": 2, "traffic_type": "Ingress", "protocol": "icmp", "src_ip": "198.51.100.10",
     "source_cidr_list": ["0.0.0.0/0"], "icmp_type": 8, "icmp_code": -1},
    {"id": 3, "traffic_type": "Egress", "protocol": "all", "src_ip": "", "source_cidr_list": ["10.1.1.0/24"],
     "dest_cidr_list": ["10.2.2.1/32"], "default_egress_policy": True, "group": "egress"},
    {"id": 4, "traffic_type": "Egress", "protocol": "all", "src_ip": "", "source_cidr_list": [],
     "dest_cidr_list": [], "default_egress_policy": True},
    {"id": 5, "traffic_type": "Egress", "protocol": "tcp", "src_ip": "", "source_cidr_list": ["10.1.1.0/24"],
     "dest_cidr_list": ["0.0.0.0/0"], "src_port_range": [20, 21], "default_egress_policy": False},
]  # fmt: skip


def test_cs_acl_flushes_egress_then_creates_its_ipsets_and_rules() -> None:
    out = updateconfig.cs_acl(SETTINGS, FIREWALL)
    assert out.handler == "CsAcl" and out.files == {}
    assert out.commands == [
        "iptables -t filter -S FW_EGRESS_RULES >/dev/null 2>&1 || iptables -t filter -N FW_EGRESS_RULES",
        "iptables -t filter -F FW_EGRESS_RULES",
        "ipset flush",
        "ipset destroy",
        "ipset create sourceCidrIpset-3 hash:net", "ipset create destCidrIpset-3 hash:net",
        "ipset add destCidrIpset-3 10.2.2.1/32",  # all protocols: the source list is ignored
        "ipset create sourceCidrIpset-4 hash:net", "ipset create destCidrIpset-4 hash:net",
        "ipset create sourceCidrIpset-5 hash:net", "ipset create destCidrIpset-5 hash:net",
        "ipset add sourceCidrIpset-5 10.1.1.0/24",  # 0.0.0.0/0 is never added
    ]  # fmt: skip
    assert texts(out.rules) == [
        ("mangle", "front", " -A FIREWALL_198.51.100.10 -s 0.0.0.0/0  -p tcp    --dport 8080  -j ACCEPT"),
        ("mangle", "front", " -A FIREWALL_198.51.100.10 -s 10.9.0.0/16  -p tcp    --dport 8080  -j ACCEPT"),
        ("mangle", "front", " -A FIREWALL_198.51.100.10 -s 0.0.0.0/0  -p icmp  --icmp-type 8 -j ACCEPT"),
        ("filter", "", " -A FW_OUTBOUND -j FW_EGRESS_RULES"),
        ("filter", "", " -I FW_EGRESS_RULES -m set --match-set destCidrIpset-3 dst  -j DROP"),
        ("filter", "", " -A FW_OUTBOUND -j FW_EGRESS_RULES"),
        ("filter", "", " -A FW_EGRESS_RULES -j ACCEPT"),  # the default rule: policy allow
        ("filter", "", " -A FW_OUTBOUND -j FW_EGRESS_RULES"),
        ("filter", "", " -I FW_EGRESS_RULES -m set --match-set sourceCidrIpset-5 src  -p tcp  -m tcp   "
                       "--dport 20:21 -j ACCEPT"),
    ]  # fmt: skip
    assert [r.group for r in out.rules][:2] == ["ingress", "ingress"]


def test_cs_acl_with_a_deny_default_policy_inverts_the_actions() -> None:
    deny = [{**rule, "default_egress_policy": False} for rule in FIREWALL[2:4]]
    rules = [r.rule for r in updateconfig.cs_acl(SETTINGS, deny).rules]
    assert rules[1].endswith("dst  -j ACCEPT") and rules[3] == " -A FW_EGRESS_RULES -j DROP"


# ------------------------------------------------------------------------------------------ CsForwardingRules


def test_cs_forwarding_rules_for_one_port_forward() -> None:
    forward = {
        "type": "forward", "protocol": "tcp", "public_ip": "198.51.100.10", "public_ports": "8080:8080",
        "internal_ip": "10.1.1.11", "internal_ports": "80:80",
        "group": "dnat", "forward_group": "dnat-forward",
    }  # fmt: skip
    out = updateconfig.cs_forwarding_rules(SETTINGS, [forward])
    assert out.handler == "CsForwardingRules" and out.files == {} and out.commands == []
    public, port = "-d 198.51.100.10/32", "-p tcp -m tcp --dport 8080"
    dnat = "-j DNAT --to-destination 10.1.1.11:80"
    assert texts(out.rules) == [
        ("nat", "", f"-A PREROUTING {public} -i eth2 {port} {dnat}"),
        ("nat", "", f"-A PREROUTING {public} -i eth0 {port} {dnat}"),
        ("nat", "", f"-A OUTPUT {public} {port} {dnat}"),
        ("nat", "", "-j SNAT --to-source 10.1.1.1 -A POSTROUTING -s 10.1.1.0/24 -d 10.1.1.11/32 -o eth0 "
                    "-p tcp -m tcp --dport 80"),
        ("nat", "", f"-A PREROUTING {public} -i eth2 {port} -j MARK --set-xmark 0x66/0xffffffff"),
        ("nat", "", f"-A PREROUTING {public} -i eth2 {port} -m state --state NEW -j CONNMARK --save-mark "
                    "--nfmask 0xffffffff --ctmask 0xffffffff"),
        ("filter", "", "-A FORWARD -i eth2 -o eth0 -p tcp -m tcp --dport 80 -m state --state NEW,ESTABLISHED "
                       "-j ACCEPT"),
    ]  # fmt: skip
    assert [r.group for r in out.rules] == ["dnat"] * 6 + ["dnat-forward"]
    ranged = {**forward, "public_ports": "8000:8010", "internal_ports": "9000:9010"}
    rule = updateconfig.cs_forwarding_rules(SETTINGS, [ranged]).rules[0].rule
    assert rule.endswith("--dport 8000:8010 -j DNAT --to-destination 10.1.1.11:9000-9010")


# ------------------------------------------------------------------------------------------ CsLoadBalancer

LB = {"config": [{
    "configuration": ["global", "\tdaemon", "\t ", "listen a\n\tbind 1.2.3.4:80"],
    "add_rules": ["198.51.100.10:8082:"], "remove_rules": ["198.51.100.10:9000:"],
    "stat_rules": ["198.51.100.10:8081:0/0:,"], "groups": {"add": "lb-input"},
}]}  # fmt: skip


def test_cs_load_balancer_writes_the_new_file_copies_it_and_reloads_or_restarts() -> None:
    out = updateconfig.cs_load_balancer(LB)
    text = "global\n\tdaemon\n\t \nlisten a\n\tbind 1.2.3.4:80\n"
    assert out.files == {"/etc/haproxy/haproxy.cfg.new": text, "/etc/haproxy/haproxy.cfg": text}
    (command,) = out.commands
    assert "/run/haproxy.pid" in command and "systemctl reload haproxy" in command
    assert command.endswith("else systemctl restart haproxy; fi") and "haproxy -c" not in command
    assert texts(out.rules) == [
        ("filter", "", "-A INPUT -p tcp -m tcp -d 198.51.100.10 --dport 8082 -m state --state NEW -j ACCEPT"),
        ("filter", "", "-D INPUT -p tcp -m tcp -d 198.51.100.10 --dport 9000 -m state --state NEW -j ACCEPT"),
        ("filter", "", "-A INPUT -p tcp -m tcp -d 198.51.100.10 --dport 8081 -m state --state NEW -j ACCEPT"),
    ]
    assert [r.group for r in out.rules] == ["lb-input", "base", "base"]


def test_cs_load_balancer_leaves_an_equal_configuration_and_haproxy_alone() -> None:
    same = updateconfig.cs_load_balancer(LB, "listen a\n\tbind 1.2.3.4:80\nglobal\n\tdaemon\n\t \n")
    assert list(same.files) == ["/etc/haproxy/haproxy.cfg.new"] and same.commands == []


# ------------------------------------------------------------------------------------------ CsSite2SiteVpn

VPN = {"local_public_ip": "198.51.100.10", "peer_gateway_ip": "198.51.100.1",
       "local_guest_cidr": "10.1.1.0/24", "peer_guest_cidr_list": "10.2.2.0/24,10.3.0.0/16"}  # fmt: skip


def test_cs_site2site_vpn_rules_accept_the_peer_and_exempt_the_tunnel_from_nat() -> None:
    files = {
        "/etc/ipsec.d/ipsec.vpn-198.51.100.1.conf": "conn x\n",
        "/etc/ipsec.d/ipsec.vpn-198.51.100.1.secrets": "s\n",
    }
    out = updateconfig.cs_site2site_vpn("eth2", VPN, files)
    assert out.files == files and out.services == ("ipsec",)
    assert out.commands == [
        "systemctl is-active -q ipsec || systemctl start ipsec", "ipsec rereadsecrets", "ipsec reload",
        "chmod 400 /etc/ipsec.d/ipsec.vpn-198.51.100.1.secrets",
    ]  # fmt: skip
    assert texts(out.rules)[:4] == [
        (
            "",
            "front",
            "-A INPUT -i eth2 -p udp -m udp --dport 500 -s 198.51.100.1 -d 198.51.100.10 -j ACCEPT",
        ),
        (
            "",
            "front",
            "-A INPUT -i eth2 -p udp -m udp --dport 4500 -s 198.51.100.1 -d 198.51.100.10 -j ACCEPT",
        ),
        ("", "front", "-A INPUT -i eth2 -p esp -s 198.51.100.1 -d 198.51.100.10 -j ACCEPT"),
        ("nat", "front", "-A POSTROUTING -t nat -o eth2 -m mark --mark 0x525 -j ACCEPT"),
    ]
    marks = texts(out.rules)[4:]
    assert len(marks) == 8 and marks[:4] == [
        ("mangle", "front", "-A FORWARD -s 10.1.1.0/24 -d 10.2.2.0/24 -j MARK --set-xmark 0x525/0xffffffff"),
        ("mangle", "", "-A OUTPUT -s 10.1.1.0/24 -d 10.2.2.0/24 -j MARK --set-xmark 0x525/0xffffffff"),
        ("mangle", "front", "-A FORWARD -s 10.2.2.0/24 -d 10.1.1.0/24 -j MARK --set-xmark 0x524/0xffffffff"),
        ("mangle", "", "-A INPUT -s 10.2.2.0/24 -d 10.1.1.0/24 -j MARK --set-xmark 0x524/0xffffffff"),
    ]
    assert "10.3.0.0/16" in marks[4][2]


# ------------------------------------------------------------------------------------------ CsFile, groups


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("a=1\n#a=0\nb=2\n", "a=9\n#a=0\nb=2\n"),  # replaced in place, the comment left alone
        ("b=2\n", "b=2\na=9\n"),  # appended when nothing matches
        ("a=9,x\n", "a=9,x\n"),  # a line already holding the replacement stays
    ],
)
def test_csfile_search_replaces_matching_lines_or_appends(before: str, after: str) -> None:
    edited = CsFileText(before)
    edited.search("a=", "a=9")
    assert edited.text() == after and edited.changed() == (before != after)


def test_csfile_add_skips_an_equal_line_and_change_is_by_set_of_lines() -> None:
    edited = CsFileText("x\ny\n")
    edited.add("y")
    assert edited.text() == "x\ny\n"
    edited.repopulate()
    for line in ("y", "x"):
        edited.add(line)
    assert edited.text() == "y\nx\n" and not edited.changed()  # the same lines in another order


def test_desired_rules_leave_out_groups() -> None:
    outputs = [updateconfig.cs_address(SETTINGS), updateconfig.cs_apache(SETTINGS)]
    every = updateconfig.desired_rules(outputs)
    without = updateconfig.desired_rules(outputs, ["snat", "apache"])
    assert len(every) - len(without) == 3
    assert every[0] == ("mangle", "front", updateconfig.fw_router(SETTINGS, SETTINGS.guest)[0].rule)
