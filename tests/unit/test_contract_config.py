"""The command-line parser and checker the image and the harness share (systemvm/contract.py)."""

from __future__ import annotations

import base64

import pytest

from systemvm import contract

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOFakeFakeFakeFakeFakeFakeFakeFakeFakeFakeFak test@harness"


def boot_args(role: str = "secstorage", **extra: str) -> contract.BootArgs:
    return contract.BootArgs(
        role=role,
        name="s-7-VM",
        nics=[("169.254.3.4", "255.255.0.0"), ("10.1.1.5", "255.255.255.0")],
        authorized_key=KEY,
        mgmt_host="169.254.0.1",
        mgmt_port=18250,
        gateway="10.1.1.1",
        dns=("10.1.1.53", "8.8.8.8"),
        extra=dict(extra),
    )


def test_harness_command_line_reads_back_into_the_same_configuration():
    text = boot_args(zone="1", pod="2").to_cmdline()
    config = contract.read_config(contract.parse_cmdline(text))
    assert config.problems == []
    assert config.role == "secstorage"
    assert config.name == "s-7-VM"
    assert [(n.name, n.ip, n.netmask) for n in config.nics.values()] == [
        ("eth0", "169.254.3.4", "255.255.0.0"),
        ("eth1", "10.1.1.5", "255.255.255.0"),
    ]
    assert config.gateway == "10.1.1.1"
    assert config.dns == ["10.1.1.53", "8.8.8.8"]
    assert config.authorized_key == KEY
    assert (config.mgmt_host, config.mgmt_port) == ("169.254.0.1", 18250)
    # unknown keys are kept as given
    assert (
        config.params["zone"] == "1" and config.params["pod"] == "2" and config.params["template"] == "domP"
    )
    assert config.control_nic == "eth0" and config.control_ip == "169.254.3.4"


def test_defaults_when_host_and_port_are_absent():
    config = contract.read_config({"type": "router"})
    assert (config.mgmt_host, config.mgmt_port) == (contract.LINK_LOCAL_HOST, contract.AGENT_PORT)
    assert config.nics == {} and config.control_ip is None and config.control_nic == "eth1"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("type", "fileserver"),
        ("name", "bad_name!"),
        ("eth0ip", "169.254.3.999"),
        ("eth0mask", "255.0.255.0"),
        ("gateway", "gw"),
        ("dns1", "not-an-ip"),
        ("mtu", "20"),
        ("mtu", "jumbo"),
        ("port", "99999"),
        ("authorized_key", "%%%not-base64"),
        ("authorized_key", base64.b64encode(b"hello world").decode()),
    ],
)
def test_malformed_value_is_skipped_and_named_never_fatal(key, value):
    params = contract.parse_cmdline(boot_args().to_cmdline())
    params[key] = value
    config = contract.read_config(params)
    assert len(config.problems) == 1 and config.problems[0].startswith(f"{key}=")
    assert config.params[key] == value  # kept as given
    # everything else is still configured
    assert config.name == ("s-7-VM" if key != "name" else None)
    if key == "eth0ip" or key == "eth0mask":
        assert 0 not in config.nics and 1 in config.nics
    else:
        assert config.nics[0].ip == "169.254.3.4"


def test_prefix_masks_per_nic_mtu_and_unconfigured_nics():
    params = dict(eth0ip="10.0.0.2", eth0mask="24", eth1ip="0.0.0.0", eth1mask="0.0.0.0", mtu="1450")
    params.update(eth2ip="192.168.1.2", eth2mask="255.255.255.0", eth2mtu="9000")
    config = contract.read_config(params)
    assert config.problems == []
    assert config.nics[0].netmask == "255.255.255.0" and config.nics[0].mtu == 1450
    assert 1 not in config.nics  # CloudStack's 0.0.0.0 means "leave it alone"
    assert config.nics[2].mtu == 9000


def test_ip_without_mask_is_reported():
    config = contract.read_config({"eth0ip": "10.0.0.2"})
    assert config.nics == {} and "no eth0mask" in config.problems[0]


def test_words_without_value_are_kept():
    assert contract.parse_cmdline("quiet type=router  name=r-1-VM\n") == {
        "quiet": "",
        "type": "router",
        "name": "r-1-VM",
    }


@pytest.mark.parametrize(
    ("role", "hypervisor", "nic"),
    [
        ("secstorage", "kvm", "eth0"),
        ("consoleproxy", "xenserver", "eth0"),
        ("vpcrouter", "kvm", "eth0"),
        ("router", "kvm", "eth1"),
        ("dhcpsrvr", "kvm", "eth1"),
        ("secstorage", "vmware", "eth1"),
        ("consoleproxy", "hyperv", "eth1"),
    ],
)
def test_control_nic_follows_the_hypervisor_the_image_detected(role, hypervisor, nic):
    config = contract.read_config({"type": role}, hypervisor)
    assert config.control_nic == nic == contract.control_nic(role, hypervisor)


def test_service_lists_per_role():
    enabled, disabled = contract.service_lists("secstorage")
    assert enabled == ("apache2", "nfs-common", "cloud")
    assert "haproxy" in disabled and "dnsmasq" in disabled and not set(enabled) & set(disabled)
    enabled, disabled = contract.service_lists("router")
    assert set(enabled) == {"haproxy", "dnsmasq", "apache2"} and "cloud" in disabled
    assert contract.service_lists("consoleproxy")[0] == ("cloud",)
    enabled, disabled = contract.service_lists(None)
    assert enabled == () and set(disabled) == set(contract.ROLE_SERVICE_POOL)


# The consoleproxy command line of CloudStack 4.20 (contract section 2), values illustrative.
CPVM_420 = (
    " template=domP type=consoleproxy host=10.1.1.10,10.1.1.11 port=8250 name=v-2-VM zone=1 pod=1"
    " guid=Proxy.2 proxy_vm=2 authorized_key=" + base64.b64encode(KEY.encode()).decode() +
    " eth2ip=203.0.113.21 eth2mask=255.255.255.0 gateway=203.0.113.1 eth0ip=169.254.2.238"
    " eth0mask=255.255.0.0 eth1ip=10.1.1.51 eth1mask=255.255.255.0 mgmtcidr=10.8.0.0/16 localgw=10.1.1.1"
    " internaldns1=10.1.1.2 dns1=8.8.8.8 dns2=8.8.4.4 vncport=8080 keystore_password=Zm9vYmFy"
)  # fmt: skip


def test_cloudstack_420_consoleproxy_command_line():
    config = contract.read_config(contract.parse_cmdline(CPVM_420))
    assert config.problems == []
    assert config.mgmt_hosts == ["10.1.1.10", "10.1.1.11"] and config.mgmt_host == "10.1.1.10"
    assert config.dns == ["10.1.1.2", "8.8.8.8", "8.8.4.4"]  # the zone's internal DNS first
    assert contract.management_route(config) == ("10.8.0.0/16", "10.1.1.1", "eth1")
    assert config.control_nic == "eth0" and config.control_ip == "169.254.2.238"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("10.1.1.10", ["10.1.1.10"]), ("10.1.1.10,ms2.example.org,", ["10.1.1.10", "ms2.example.org"])],
)
def test_host_is_a_comma_separated_list(value, expected):
    config = contract.read_config({"host": value})
    assert config.problems == [] and config.mgmt_hosts == expected and config.mgmt_host == expected[0]


@pytest.mark.parametrize("value", [",", "10.1.1.10,bad_host!"])
def test_a_malformed_host_list_falls_back_and_is_named(value):
    config = contract.read_config({"host": value})
    assert config.mgmt_hosts == [contract.LINK_LOCAL_HOST] and config.problems[0].startswith("host=")


def test_internal_dns_comes_first_and_duplicates_are_dropped():
    config = contract.read_config({"dns1": "8.8.8.8", "internaldns2": "10.0.0.3", "internaldns1": "10.0.0.2",
                                   "dns2": "10.0.0.2"})  # fmt: skip
    assert config.dns == ["10.0.0.2", "10.0.0.3", "8.8.8.8"]


def test_management_route_needs_localgw_on_a_nic_and_a_foreign_cidr():
    base = {"eth1ip": "10.1.1.51", "eth1mask": "255.255.255.0", "localgw": "10.1.1.1"}
    # the management network is the NIC's own: the connected route reaches it
    assert contract.management_route(contract.read_config({**base, "mgmtcidr": "10.1.1.0/24"})) is None
    assert contract.management_route(contract.read_config({**base, "mgmtcidr": "10.1.1.128/25"})) is None
    # host bits in the CIDR are dropped, as `ip route` would
    config = contract.read_config({**base, "mgmtcidr": "10.9.3.4/16"})
    assert contract.management_route(config) == ("10.9.0.0/16", "10.1.1.1", "eth1")
    with pytest.raises(ValueError, match="none of the NICs"):
        elsewhere = {**base, "localgw": "10.2.2.1", "mgmtcidr": "10.9.0.0/16"}
        contract.management_route(contract.read_config(elsewhere))
    assert contract.management_route(contract.read_config(base)) is None  # no mgmtcidr: nothing to route
    bad = contract.read_config({**base, "mgmtcidr": "10.9.0.0/33"})
    assert bad.mgmt_cidr is None and bad.problems[0].startswith("mgmtcidr=")


def test_cmd_line_json_has_cloudstacks_shape_with_every_key_in_order():
    params = contract.parse_cmdline(CPVM_420 + " flag")
    document = contract.cmd_line_json(params)
    assert list(document) == ["type", "cmd_line"] and document["type"] == "cmdline"
    assert list(document["cmd_line"]) == [word.partition("=")[0] for word in (CPVM_420 + " flag").split()]
    assert all(isinstance(v, str) for v in document["cmd_line"].values())
    assert document["cmd_line"]["flag"] == "" and document["cmd_line"]["host"] == "10.1.1.10,10.1.1.11"
    # base64 values keep their padding
    assert document["cmd_line"]["authorized_key"].endswith(base64.b64encode(KEY.encode()).decode()[-4:])


# --- the optional keys of CloudStack 4.20 (contract section 2; common.sh, ilbvm.sh, elbvm.sh) ---------


@pytest.mark.parametrize(
    ("role", "params", "nic"),
    [
        ("ilbvm", {}, "eth1"),
        ("ilbvm", {"sshonguest": "true"}, "eth1"),  # ilbvm.sh always binds SSH to eth1
        ("elbvm", {}, "eth1"),
        ("elbvm", {"sshonguest": "true"}, "eth0"),
        ("elbvm", {"sshonguest": "false"}, "eth1"),
    ],
)
def test_load_balancer_roles_and_their_control_nic(role, params, nic):
    config = contract.read_config({"type": role, **params})
    assert config.problems == [] and config.role == role
    assert config.control_nic == nic
    assert contract.nic_count(role) == 2  # eth0 guest, eth1 control, wherever SSH is


@pytest.mark.parametrize("role", ["ilbvm", "elbvm"])
def test_load_balancer_roles_run_haproxy_and_open_ssh_only(role):
    enabled, disabled = contract.service_lists(role)
    assert enabled == ("haproxy",) and "dnsmasq" in disabled and "cloud" in disabled
    rules = contract.boot_rules_v4(contract.base_rules_v4(role), role, "eth1")
    accepted = [line for line in rules.splitlines() if "--dport" in line]
    ssh = "-A INPUT -i eth1 -p tcp -m tcp -m state --state NEW,ESTABLISHED --dport 3922 -j ACCEPT"
    assert accepted == [ssh]
    assert "-A FORWARD -i" not in rules  # the load balancers do not forward (enable_fwding 0)


def test_every_role_table_covers_every_role():
    for table in (contract.ROLE_PORTS, contract.ROLE_UDP_PORTS, contract.ROLE_SERVICES):
        assert set(table) == set(contract.ROLES)
    for role in contract.ROLES:
        contract.control_nic(role)
        contract.nic_count(role)


def test_nic_macs_are_pipe_separated_in_nic_order():
    config = contract.read_config({"nic_macs": "0E:00:A9:FE:03:04|52:54:00:12:34:56"})
    assert config.problems == []
    assert config.nic_macs == ["0e:00:a9:fe:03:04", "52:54:00:12:34:56"]
    assert contract.nic_macs_value(config.nic_macs) == "0e:00:a9:fe:03:04|52:54:00:12:34:56"


@pytest.mark.parametrize(
    "value", ["52:54:00:12:34", "52:54:00:12:34:56,52:54:00:12:34:57", "aa:aa:aa:aa:aa:aa|AA:AA:AA:AA:AA:AA"]
)
def test_malformed_nic_macs_are_skipped_and_named(value):
    config = contract.read_config({"nic_macs": value})
    assert config.nic_macs == [] and config.problems[0].startswith("nic_macs=")


SSVM_STORAGE = {
    "type": "secstorage", "eth0ip": "169.254.10.20", "eth0mask": "255.255.0.0", "eth3ip": "0.0.0.0",
    "eth3mask": "0.0.0.0", "storageip": "172.16.5.20", "storagenetmask": "255.255.255.0",
    "storagegateway": "172.16.5.1", "mtu": "9000",
}  # fmt: skip


def test_storage_keys_address_the_fourth_nic():
    config = contract.read_config(SSVM_STORAGE)
    assert config.problems == []
    storage = config.nics[contract.STORAGE_NIC_INDEX]
    assert (storage.name, storage.ip, storage.netmask, storage.mtu) == (
        "eth3",
        "172.16.5.20",
        "255.255.255.0",
        9000,
    )
    assert config.storage_gateway == "172.16.5.1"


def test_a_half_storage_network_is_reported():
    config = contract.read_config({k: v for k, v in SSVM_STORAGE.items() if k != "storagenetmask"})
    assert contract.STORAGE_NIC_INDEX not in config.nics
    assert config.problems == ["storage network skipped: storageip and storagenetmask go together"]


def test_ipv6_addresses_gateway_and_resolvers():
    params = {"eth0ip": "10.1.1.1", "eth0mask": "24", "eth0ip6": "FD00:1::1", "eth0ip6prelen": "64",
              "eth2ip6": "2001:db8::5", "eth2ip6prelen": "48", "ip6gateway": "fd00:1::ff",
              "internaldns1": "10.0.0.2", "dns1": "8.8.8.8", "ip6dns1": "2001:4860:4860::8888",
              "ip6dns2": "2001:4860:4860::8844"}  # fmt: skip
    config = contract.read_config(params)
    assert config.problems == []
    assert (config.nics[0].ip, config.nics[0].ip6, config.nics[0].ip6_prefixlen) == (
        "10.1.1.1",
        "fd00:1::1",
        64,
    )
    assert config.nics[2].ip is None and str(config.nics[2].interface6) == "2001:db8::5/48"  # IPv6 only
    assert config.gateway6 == "fd00:1::ff"
    # the IPv4 resolvers first, the zone's internal one leading, as today
    assert config.dns == ["10.0.0.2", "8.8.8.8", "2001:4860:4860::8888", "2001:4860:4860::8844"]


@pytest.mark.parametrize(
    ("key", "value"),
    [("eth0ip6", "10.0.0.1"), ("eth0ip6prelen", "129"), ("ip6gateway", "gw"), ("ip6dns1", "8.8.8.8"),
     ("bootproto", "bootp"), ("disable_rp_filter", "yes"), ("sshonguest", "1"), ("ntpserverlist", ","),
     ("ntpserverlist", "ntp_1.example"), ("storageip", "300.1.1.1"), ("storagegateway", "x")],
)  # fmt: skip
def test_malformed_optional_keys_are_skipped_and_named(key, value):
    params = {"eth0ip": "10.1.1.1", "eth0mask": "24", "eth0ip6": "fd00::1", "eth0ip6prelen": "64",
              "storageip": "172.16.5.20", "storagenetmask": "24"}  # fmt: skip
    params[key] = value
    config = contract.read_config(params)
    assert any(p.startswith(f"{key}=") for p in config.problems), config.problems
    assert config.nics[0].ip == "10.1.1.1"  # the rest is still configured


def test_ipv6_address_without_prefix_length_is_reported():
    config = contract.read_config({"eth1ip6": "fd00::1"})
    assert config.nics == {} and config.problems == ["eth1ip6=fd00::1 skipped: no eth1ip6prelen"]


def test_bootproto_dhcp_moves_every_configured_nic_but_eth0_to_dhcp():
    params = {"bootproto": "dhcp", "eth0ip": "169.254.3.4", "eth0mask": "255.255.0.0", "eth1ip": "10.1.1.5",
              "eth1mask": "255.255.255.0", "eth2ip": "0.0.0.0", "eth2mask": "0.0.0.0"}  # fmt: skip
    config = contract.read_config(params)
    assert config.problems == [] and config.dhcp
    assert config.nics[0].ip == "169.254.3.4" and not config.nics[0].dhcp
    assert config.nics[1].dhcp and config.nics[1].ip is None and config.nics[1].interface is None
    assert 2 not in config.nics  # 0.0.0.0: left alone, DHCP or not
    assert not contract.read_config({**params, "bootproto": "static"}).nics[1].dhcp


def test_ntpserverlist_keeps_its_order():
    config = contract.read_config({"ntpserverlist": "ntp1.example.org, 10.0.0.5,2001:db8::123"})
    assert config.problems == [] and config.ntp_servers == ["ntp1.example.org", "10.0.0.5", "2001:db8::123"]
    assert contract.timesyncd_dropin(config.ntp_servers).splitlines()[1:] == [
        "[Time]",
        "NTP=ntp1.example.org 10.0.0.5 2001:db8::123",
    ]


def test_vmpassword_is_read_and_never_shown():
    config = contract.read_config({"vmpassword": "s3cret-Pass"})
    assert config.vm_password == "s3cret-Pass"
    assert "s3cret-Pass" not in repr(config)
    bad = contract.read_config({"vmpassword": "s3cret\x07"})
    assert bad.vm_password is None and bad.problems == ["vmpassword=<hidden> skipped: empty or not printable"]


@pytest.mark.parametrize(
    ("role", "disable", "expected"),
    [
        ("router", True, {"default": "0", "eth0": "1", "eth1": "1", "lo": "1", "eth2": "0", "eth3": "0"}),
        ("router", False, {"default": "1", "eth0": "1", "eth1": "1", "lo": "1", "eth2": "1", "eth3": "1"}),
        ("secstorage", False, {"default": "0"}),
        ("consoleproxy", True, {"default": "0"}),
        ("vpcrouter", False, {"default": "0"}),
        ("dhcpsrvr", True, {}),
        ("ilbvm", True, {}),
    ],
)
def test_rp_filter_follows_cloudstacks_setup_scripts(role, disable, expected):
    values = contract.rp_filter_sysctls(role, disable, ("eth0", "eth1", "eth2", "eth3"))
    assert values == {f"net.ipv4.conf.{nic}.rp_filter": value for nic, value in expected.items()}


def test_role_sysctls_turn_ipv6_on_only_for_a_nic_with_an_address():
    assert not any(
        k.startswith("net.ipv6") for k in contract.role_sysctls(contract.read_config({"type": "router"}))
    )
    params = {"type": "router", "eth0ip6": "fd00::1", "eth0ip6prelen": "64", "disable_rp_filter": "true"}
    values = contract.role_sysctls(contract.read_config(params))
    assert (
        values["net.ipv6.conf.all.disable_ipv6"] == "0" and values["net.ipv6.conf.eth0.disable_ipv6"] == "0"
    )
    assert values["net.ipv6.conf.all.forwarding"] == "1" and values["net.ipv4.ip_forward"] == "1"
    assert values["net.ipv4.conf.default.rp_filter"] == "0"
    secstorage = contract.role_sysctls(contract.read_config({**params, "type": "secstorage"}))
    assert secstorage["net.ipv6.conf.all.forwarding"] == "0" and secstorage["net.ipv4.ip_forward"] == "0"
