"""What the boot leaves a role, as CloudStack's own boot leaves it, on a temporary root: sshd bound to the
control address in sshd_config itself, a router's dnsmasq base configuration (setup_dnsmasq), apache
without Debian's sites (setup_apache2, the storage VM's own virtual host), postinit's steps and order, the
data bags an earlier life left (systemvm/guest/early_config.py, dnsmasq.py, apache.py, postinit.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from systemvm import contract
from systemvm.guest import apache, dnsmasq, early_config, postinit
from systemvm.guest.system import Guest

ROUTER = {"type": "router", "name": "r-4-VM", "eth0ip": "10.1.1.1", "eth0mask": "255.255.255.0",
          "domain": "cs1cloud.internal", "cidrsize": "24", "dhcprange": "10.1.1.1", "eth1ip": "169.254.3.44",
          "eth1mask": "255.255.0.0", "eth2ip": "203.0.113.30", "eth2mask": "255.255.255.0",
          "gateway": "203.0.113.1", "dns1": "8.8.8.8"}  # fmt: skip


class Calls:
    def __init__(self, fail: tuple[str, ...] = ()) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, argv: list[str]) -> str:
        self.calls.append(argv)
        if argv[0] in self.fail:
            raise OSError(f"{argv[0]} failed")
        return ""


# --------------------------------------------------------------------------------------------- sshd


CLOUDSTACK_LIKE = "\n".join(
    ["Port 3922", "PermitRootLogin yes", "#ListenAddress 0.0.0.0", "UsePAM yes", "Match User backup", "  X"]
)


def test_sshd_binds_the_control_address_in_sshd_config_whatever_it_holds() -> None:
    """A patched sshd_config (CloudStack's: no Include, a commented ListenAddress) gets the address where its
    ListenAddress line stood; one without any gets it before its Match block; old ones go."""
    text = early_config.sshd_config_listening(CLOUDSTACK_LIKE, "169.254.3.44")
    assert text.splitlines()[2] == "ListenAddress 169.254.3.44:3922"
    assert text.count("ListenAddress") == 1
    bare = early_config.sshd_config_listening("Port 3922\nMatch User x\n  X11Forwarding no\n", "10.0.0.5")
    assert bare.splitlines() == [
        "Port 3922",
        "ListenAddress 10.0.0.5:3922",
        "Match User x",
        "  X11Forwarding no",
    ]
    twice = early_config.sshd_config_listening(
        "ListenAddress 1.2.3.4\nListenAddress ::\nPort 3922\n", "10.0.0.5"
    )
    assert twice.splitlines() == ["ListenAddress 10.0.0.5:3922", "Port 3922"]
    assert "ListenAddress" not in early_config.sshd_config_listening(CLOUDSTACK_LIKE, None)


def test_configure_ssh_listen_rewrites_a_patched_sshd_config(tmp_path: Path) -> None:
    guest = Guest(tmp_path, echo=False)
    guest.write("/etc/ssh/sshd_config", CLOUDSTACK_LIKE)
    guest.write(early_config.OLD_SSH_LISTEN_CONF, "ListenAddress 1.2.3.4:3922\n")
    (tmp_path / "proc/sys/net/ipv4").mkdir(parents=True)
    early_config.configure_ssh_listen(guest, contract.read_config(ROUTER))
    text = (tmp_path / "etc/ssh/sshd_config").read_text()
    assert "ListenAddress 169.254.3.44:3922" in text.splitlines()
    assert not (tmp_path / early_config.OLD_SSH_LISTEN_CONF.lstrip("/")).exists()


# ------------------------------------------------------------------------------------------ dnsmasq


def test_router_dnsmasq_conf_is_setup_dnsmasqs() -> None:
    lines = dnsmasq.dnsmasq_conf(contract.read_config(ROUTER), managed_lease=True).splitlines()
    for wanted in (
        "dhcp-hostsfile=/etc/dhcphosts.txt", "dhcp-optsfile=/etc/dhcpopts.txt", "conf-dir=/etc/dnsmasq.d",
        "dhcp-ignore=tag:!known", "except-interface=eth1", "except-interface=eth2", "no-dhcp-interface=eth1",
        "no-dhcp-interface=eth2", "resolv-file=/etc/dnsmasq-resolv.conf", "domain=cs1cloud.internal",
        "local=/cs1cloud.internal/", 'dhcp-option=15,"cs1cloud.internal"', "dhcp-range=10.1.1.1,static",
        "dhcp-option=option:router,10.1.1.1", "dhcp-option=6,10.1.1.1,8.8.8.8",
        "log-facility=/var/log/dnsmasq.log", "enable-tftp", "tftp-root=/opt/tftpboot",
    ):  # fmt: skip
        assert wanted in lines, wanted
    assert "leasefile-ro" not in lines  # dhcp_release present: CsDhcp edits the lease file
    assert "leasefile-ro" in dnsmasq.dnsmasq_conf(contract.read_config(ROUTER), managed_lease=False)
    assert "port=0" in dnsmasq.dnsmasq_conf(contract.read_config({**ROUTER, "useextdns": "true"}), True)


def test_router_dnsmasq_with_ipv6_and_the_dhcp_only_routers_gateway() -> None:
    ipv6 = contract.read_config(
        {**ROUTER, "eth0ip6": "fd00::1", "eth0ip6prelen": "64", "ip6dns1": "fd00::53"}
    )
    lines = dnsmasq.dnsmasq_conf(ipv6, managed_lease=False).splitlines()
    assert "dhcp-range=fd00::1,static" in lines
    assert "dhcp-option=option6:dns-server,[::],[fd00::53]" in lines
    dhcp_only = contract.read_config({**ROUTER, "type": "dhcpsrvr", "gateway": "10.1.1.254"})
    assert "dhcp-option=option:router,10.1.1.254" in dnsmasq.dnsmasq_conf(dhcp_only, True).splitlines()


def test_configure_dnsmasq_writes_the_templates_share_only_for_routers(tmp_path: Path) -> None:
    guest = Guest(tmp_path, echo=False)
    guest.write("/etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\tr-4-VM\n10.9.9.9 r-4-VM\n")
    guest.write("/usr/bin/dhcp_release", "")
    dnsmasq.configure_dnsmasq(guest, contract.read_config(ROUTER))
    assert (tmp_path / "etc/dnsmasq.conf").read_text() == dnsmasq.dnsmasq_conf(
        contract.read_config(ROUTER), True
    )
    assert (tmp_path / "etc/dnsmasq-resolv.conf").read_text() == "nameserver 8.8.8.8\n"
    assert (tmp_path / "etc/dhcpopts.txt").read_text() == ""
    assert (tmp_path / "var/cache/cloud/dnsmasq_managed_lease").read_text() == "1\n"
    assert (tmp_path / "opt/tftpboot").is_dir()
    hosts = (tmp_path / "etc/hosts").read_text().splitlines()
    assert hosts[-2:] == ["10.1.1.1 r-4-VM", "10.1.1.1 data-server"] and "10.9.9.9 r-4-VM" not in hosts
    storage = Guest(tmp_path / "storage", echo=False)
    dnsmasq.configure_dnsmasq(storage, contract.read_config({"type": "secstorage", "dns1": "1.1.1.1"}))
    assert not (tmp_path / "storage/etc/dnsmasq.conf").exists()


# ------------------------------------------------------------------------------------------- apache


def debian_apache(root: Path) -> None:
    for path, text in {
        "etc/apache2/apache2.conf": "ServerRoot x\nInclude ports.conf\nIncludeOptional sites-enabled/*\n",
        "etc/apache2/ports.conf": "Listen 80\n",
        "etc/apache2/sites-available/000-default.conf": "<VirtualHost *:80>\n</VirtualHost>\n",
        "etc/apache2/sites-available/default-ssl.conf": "<VirtualHost *:443>\n</VirtualHost>\n",
        "etc/apache2/mods-available/proxy.load": "LoadModule proxy_module x\n",
        "etc/apache2/mods-available/proxy.conf": "\n",
        "etc/apache2/mods-available/headers.load": "LoadModule headers_module x\n",
        "var/www/html/index.html": "it works\n",
    }.items():  # fmt: skip
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    (root / "etc/apache2/sites-enabled").mkdir()
    (root / "etc/apache2/sites-enabled/000-default.conf").symlink_to("../sites-available/000-default.conf")


def test_router_apache_has_only_its_guest_address_virtual_host_and_no_ports_conf(tmp_path: Path) -> None:
    """Debian's sites and ports.conf gone; the one virtual host CsApache writes at boot (through postinit's
    update_config.py on CloudStack's template) on the guest address."""
    debian_apache(tmp_path)
    apache.configure_apache(Guest(tmp_path, echo=False), contract.read_config(ROUTER))
    assert sorted(p.name for p in (tmp_path / "etc/apache2/sites-enabled").iterdir()) == [
        "vhost-10.1.1.1.conf"
    ]
    vhost = (tmp_path / "etc/apache2/sites-enabled/vhost-10.1.1.1.conf").read_text()
    assert "Listen 10.1.1.1:80" in vhost and "<VirtualHost 10.1.1.1:80>" in vhost and "*:" not in vhost
    assert not list((tmp_path / "etc/apache2/sites-available").iterdir())
    assert not (tmp_path / "etc/apache2/ports.conf").exists()
    conf = (tmp_path / "etc/apache2/apache2.conf").read_text()
    assert "#Include ports.conf" in conf and "\nInclude ports.conf" not in conf
    assert (tmp_path / "var/www/html/.htaccess").read_text() == "Options -Indexes\n"


def test_storage_apache_gets_its_public_virtual_host(tmp_path: Path) -> None:
    debian_apache(tmp_path)
    public = {"eth2ip": "198.51.100.11", "eth2mask": "255.255.255.0", "public.network.device": "eth2"}
    config = contract.read_config({"type": "secstorage", **public})
    apache.configure_apache(Guest(tmp_path, echo=False), config)
    enabled = sorted(p.name for p in (tmp_path / "etc/apache2/sites-enabled").iterdir())
    assert enabled == ["vhost-198.51.100.11.conf"]
    vhost = (tmp_path / "etc/apache2/sites-enabled/vhost-198.51.100.11.conf").read_text()
    assert "<VirtualHost 198.51.100.11:80>" in vhost and "Listen 198.51.100.11:80" in vhost
    assert "*:" not in vhost
    assert (tmp_path / "etc/apache2/mods-enabled/proxy.load").resolve() == (
        tmp_path / "etc/apache2/mods-available/proxy.load"
    )
    assert (tmp_path / "etc/apache2/mods-enabled/headers.load").is_symlink()


def test_console_proxy_apache_is_left_alone(tmp_path: Path) -> None:
    debian_apache(tmp_path)
    apache.configure_apache(Guest(tmp_path, echo=False), contract.read_config({"type": "consoleproxy"}))
    assert (tmp_path / "etc/apache2/sites-enabled/000-default.conf").exists()


# ------------------------------------------------------------------------------------------ postinit


def postinit_root(tmp_path: Path, role: str) -> Path:
    for directory in ("var/cache/cloud", "var/log"):
        (tmp_path / directory).mkdir(parents=True)
    (tmp_path / "var/cache/cloud/cmdline").write_text(f"template=domP type={role} name=x\n")
    (tmp_path / "etc/iptables").mkdir(parents=True)
    (tmp_path / "etc/iptables/rules.v4").write_text("*filter\nCOMMIT\n")
    return tmp_path


def test_postinit_converges_a_patched_router_then_services_rules_and_boot_done(tmp_path: Path) -> None:
    root = postinit_root(tmp_path, "router")
    script = root / postinit.UPDATE_CONFIG.lstrip("/")
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    run = Calls()
    postinit.postinit(Guest(root, run, echo=False))
    names = [c[0] for c in run.calls]
    assert run.calls[0] == [postinit.UPDATE_CONFIG, "cmd_line.json"]
    assert names.index("iptables-restore") > names.index(postinit.UPDATE_CONFIG)
    assert (root / "var/cache/cloud/boot_up_done").exists()


@pytest.mark.parametrize("role", ["router", "secstorage"])
def test_postinit_runs_no_update_config_the_image_does_not_have(tmp_path: Path, role: str) -> None:
    run = Calls(fail=("iptables-restore",))
    root = postinit_root(tmp_path, role)
    postinit.postinit(Guest(root, run, echo=False))
    assert not [c for c in run.calls if c[0] == postinit.UPDATE_CONFIG]
    assert (root / "var/cache/cloud/boot_up_done").exists()  # a failed restore is logged, the boot ends
    assert "iptables-restore /etc/iptables/rules.v4 failed" in (root / "var/log/cloud.log").read_text()


def test_postinit_comes_before_ssh_and_does_not_require_networking() -> None:
    unit = (Path(__file__).resolve().parents[2] / "elements/systemvm-boot/static/etc/systemd/system"
            / "systemvm-postinit.service").read_text()  # fmt: skip
    assert "Before=ssh.service" in unit and "Requires=" not in unit and "networking.service" in unit


# --------------------------------------------------------------------------------- data bags, boot


def test_a_command_line_from_the_kvm_host_drops_the_data_bags_of_an_earlier_life(tmp_path: Path) -> None:
    guest = Guest(tmp_path, echo=False)
    guest.write("/etc/cloudstack/ips.json", "{}")
    guest.write("/etc/cloudstack/.keep", "")
    early_config.forget_data_bags(guest)
    assert sorted(p.name for p in (tmp_path / "etc/cloudstack").iterdir()) == [".keep"]


def test_postinit_runs_the_user_data_after_the_services_and_before_the_boot_is_done() -> None:
    """CloudStack 4.22's postinit: user data once the services run, before boot_up_done (the handshake
    waits for it, so the management server sees the VM ready only after the user data ran)."""
    steps = postinit.STEPS
    assert steps.index(postinit.apply_services) < steps.index(postinit.run_user_data)
    assert steps.index(postinit.run_user_data) < steps.index(postinit.mark_boot_done)
    assert steps[-1] is postinit.mark_boot_done
