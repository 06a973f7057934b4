"""Per-role iptables rules: rendered by contract.py, saved where netfilter-persistent loads them, applied now.

Called by cloud-early-config (cloud_boot.apply_firewall) with the checked command line. Saving to
/etc/iptables/rules.v4 keeps the rules across a reboot even before the boot configuration runs again.
"""

from __future__ import annotations

try:  # in the image: /opt/cloud/lib/contract.py, a copy of systemvm/contract.py
    import contract
except ImportError:  # in the repository (unit tests)
    from systemvm import contract  # type: ignore[no-redef]


def nic_names(config: contract.BootConfig) -> tuple[str, ...]:
    names = {nic.name for nic in config.nics.values()} | {config.control_nic}
    return tuple(sorted(names))


def apply(guest, config: contract.BootConfig) -> None:  # guest: a cloud_boot.Guest
    v4 = contract.firewall_rules_v4(config.role, config.control_nic, nic_names(config))
    guest.write(contract.RULES_V4_PATH, v4)
    guest.write(contract.RULES_V6_PATH, contract.firewall_rules_v6())
    guest.run(["iptables-restore", str(guest.path(contract.RULES_V4_PATH))])
    guest.run(["ip6tables-restore", str(guest.path(contract.RULES_V6_PATH))])
    guest.log(f"firewall: {config.role or 'no role'} rules applied, SSH on {config.control_nic} only")
