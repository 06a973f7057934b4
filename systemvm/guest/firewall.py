"""Per-role iptables rules: rendered by :mod:`systemvm.contract` (the harness checks the same text), saved
where netfilter-persistent loads them, applied now.

A step of cloud-early-config (:mod:`systemvm.guest.early_config`), run with the checked command line.
Saving to /etc/iptables/rules.v4 keeps the rules across a reboot even before the boot configuration runs
again. The element systemvm-firewall saves the rules an unconfigured image boots with
(:func:`write_default_rules`) and enables netfilter-persistent.
"""

from __future__ import annotations

from systemvm import contract
from systemvm.guest.system import Guest


def nic_names(config: contract.BootConfig) -> tuple[str, ...]:
    names = {nic.name for nic in config.nics.values()} | {config.control_nic}
    return tuple(sorted(names))


def apply_firewall(guest: Guest, config: contract.BootConfig) -> None:
    v4 = contract.firewall_rules_v4(config.role, config.control_nic, nic_names(config))
    guest.write(contract.RULES_V4_PATH, v4)
    guest.write(contract.RULES_V6_PATH, contract.firewall_rules_v6())
    guest.run(["iptables-restore", str(guest.path(contract.RULES_V4_PATH))])
    guest.run(["ip6tables-restore", str(guest.path(contract.RULES_V6_PATH))])
    guest.log(f"firewall: {config.role or 'no role'} rules applied, SSH on {config.control_nic} only")


def write_default_rules(guest: Guest) -> None:
    """The rules of an image no command line configured yet: SSH on eth0 only (the image build runs this)."""
    guest.write(contract.RULES_V4_PATH, contract.firewall_rules_v4(None, "eth0"))
    guest.write(contract.RULES_V6_PATH, contract.firewall_rules_v6())
