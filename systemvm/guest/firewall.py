"""The role's base rules, loaded as CloudStack's boot loads them.

The image ships CloudStack's rules files, /etc/iptables/iptables-<role> (elements/systemvm-firewall writes
them from :func:`systemvm.contract.base_rules_v4`; a patch from the management server replaces them with
CloudStack's own). At every boot the role's file is copied to /etc/iptables/rules.v4 with the 3922 rule on the
control NIC and a router's DNS rules limited to its guest network (CloudStack's init.sh, router.sh and
setup_sshd), and loaded; netfilter-persistent loads the same file at the next boot before this runs again.
Nothing else: the rules a router gets later come from the management server (update_config.py), and the
boot's postinit restores what it saved (:mod:`systemvm.guest.postinit`).
"""

from __future__ import annotations

import ipaddress

from systemvm import contract
from systemvm.guest.system import Guest


def guest_source(config: contract.BootConfig) -> str | None:
    """``<dhcprange>/<cidrsize>`` for a router's DNS rules (router.sh): the range's first address (the guest
    NIC's own when ``dhcprange`` is absent) and the guest network's prefix length (``cidrsize``, else
    eth0's netmask)."""
    guest = config.nics.get(0)
    if config.role != "router" or guest is None or guest.interface is None:
        return None
    first = config.params.get("dhcprange", "").replace(":", ",").split(",")[0] or guest.ip
    size = config.params.get("cidrsize") or str(guest.interface.network.prefixlen)
    try:
        ipaddress.IPv4Address(first)
        if not 0 <= int(size) <= 32:
            raise ValueError(size)
    except ValueError:
        return f"{guest.ip}/{guest.interface.network.prefixlen}"
    return f"{first}/{size}"


def role_rules(guest: Guest, config: contract.BootConfig) -> str:
    """rules.v4 for this boot: the role's rules file as the boot adjusts it (SSH only on the control NIC
    without a role)."""
    if not config.role:
        return contract.default_rules_v4(config.control_nic)
    source = guest.path(contract.rules_file(config.role, boot=True))
    text = source.read_text() if source.is_file() else ""
    if not text.strip():
        guest.log(f"{source} is missing: using the {config.role} rules this image was built with")
        text = contract.base_rules_v4(contract.BOOT_RULES_FILE_ROLE.get(config.role, config.role))
    vnc_port = config.params.get("vncport") if config.params.get("vncport", "").isdigit() else None
    return contract.boot_rules_v4(text, config.role, config.control_nic, guest_source(config), vnc_port)


def apply_firewall(guest: Guest, config: contract.BootConfig) -> None:
    guest.write(contract.RULES_V4_PATH, role_rules(guest, config))
    guest.write(contract.RULES_V6_PATH, contract.firewall_rules_v6())
    guest.run(["iptables-restore", str(guest.path(contract.RULES_V4_PATH))])
    guest.run(["ip6tables-restore", str(guest.path(contract.RULES_V6_PATH))])
    guest.log(f"firewall: {config.role or 'no role'} rules applied, SSH on {config.control_nic} only")


def write_image_rules(guest: Guest) -> None:
    """What the image build writes: every role's rules file, and the rules an image no command line
    configured yet boots with (SSH on eth0 only)."""
    for role in contract.ROLES:
        guest.write(contract.rules_file(role), contract.base_rules_v4(role))
    guest.write(contract.RULES_V4_PATH, contract.default_rules_v4("eth0"))
    guest.write(contract.RULES_V6_PATH, contract.firewall_rules_v6())
