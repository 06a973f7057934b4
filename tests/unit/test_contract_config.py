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
