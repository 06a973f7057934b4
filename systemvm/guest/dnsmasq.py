"""dnsmasq's base configuration on a router, as CloudStack's boot leaves it (``setup_dnsmasq`` in
systemvm/debian/opt/cloud/bin/setup/common.sh, from etc/dnsmasq.conf.tmpl; called by router.sh and
dhcpsrvr.sh).

The management server's ``CsDhcp`` (update_config.py) writes only /etc/dnsmasq.d/cloud.conf (the tagged
ranges and options), /etc/dhcphosts.txt, /etc/dhcpopts.txt and /etc/hosts, then restarts dnsmasq: every other
setting -- the hosts and options files read at all, unknown MACs ignored, the public and control NICs left
alone, the lease file, the domain, the default range, the router and resolver options -- is the template's,
written here at every boot from the command line.
"""

from __future__ import annotations

from systemvm import contract
from systemvm.guest.system import Guest

DNSMASQ_CONF = "/etc/dnsmasq.conf"
DNSMASQ_RESOLV = "/etc/dnsmasq-resolv.conf"  # dnsmasq's upstream resolvers (setup_common writes both files)
DHCP_HOSTS = "/etc/dhcphosts.txt"
DHCP_OPTS = "/etc/dhcpopts.txt"
MANAGED_LEASE = f"{contract.CACHE_DIR}/dnsmasq_managed_lease"
TFTP_ROOT = "/opt/tftpboot"  # the image makes it: dnsmasq refuses to start with enable-tftp and no root
DEFAULT_DOMAIN = "cloudnine.internal"  # setup_dnsmasq's default when the command line names none
ROLES = ("router", "dhcpsrvr")  # vpcrouter.sh sets dnsmasq up from its data bags instead


def default_gateway(config: contract.BootConfig) -> str:
    """The router option's address: the guest gateway on a redundant router, ``gateway`` on a DHCP-only
    router, else the router's own guest address."""
    guest = config.nics.get(0)
    own = guest.ip if guest and guest.ip else ""
    if config.params.get("redundant_router") == "1":
        return config.params.get("guestgw", "")
    if config.role == "dhcpsrvr":
        return config.gateway or ""
    return own


def dnsmasq_conf(config: contract.BootConfig, managed_lease: bool) -> str:
    """/etc/dnsmasq.conf for a router's command line. ``managed_lease``: dnsmasq keeps its lease file (the
    image has dhcp_release and the guest NIC no IPv6 address), so CsDhcp can edit and release leases."""
    params = config.params
    guest = config.nics.get(0)
    guest_ip = guest.ip if guest and guest.ip else ""
    domain = params.get("domain") or DEFAULT_DOMAIN
    dhcp_range = params.get("dhcprange", "").replace(":", ",") or guest_ip
    lines = [
        "# Written by cloud-early-config at every boot, as CloudStack's setup_dnsmasq leaves it; the",
        "# management server's CsDhcp adds /etc/dnsmasq.d/cloud.conf, dhcphosts.txt and dhcpopts.txt.",
        "domain-needed",
        "bogus-priv",
        f"resolv-file={DNSMASQ_RESOLV}",
        f"local=/{domain}/",
        "except-interface=eth1",
        "except-interface=eth2",
        "except-interface=lo",
        "no-dhcp-interface=eth1",
        "no-dhcp-interface=eth2",
        "expand-hosts",
        f"domain={domain}",
    ]
    if dhcp_range:
        lines.append(f"dhcp-range={dhcp_range},static")
    if guest and guest.ip6:
        lines.append(f"dhcp-range={guest.ip6},static")
    lines += [
        f"dhcp-hostsfile={DHCP_HOSTS}",
        "dhcp-ignore=tag:!known",  # answer only the MACs CsDhcp lists (no DHCPINFORM to strangers)
        f'dhcp-option=15,"{domain}"',
        "dhcp-option=vendor:MSFT,2,1i",
        "dhcp-boot=pxelinux.0",
        "enable-tftp",
        f"tftp-root={TFTP_ROOT}",
        "dhcp-lease-max=2100",
    ]
    if not managed_lease:
        lines.append("leasefile-ro")
    lines += ["log-facility=/var/log/dnsmasq.log", "conf-dir=/etc/dnsmasq.d", f"dhcp-optsfile={DHCP_OPTS}"]
    gateway = default_gateway(config)
    if gateway:
        lines.append(f"dhcp-option=option:router,{gateway}")
    if params.get("useextdns") == "true":
        lines.append("port=0")  # the guests use the public resolvers directly: dnsmasq answers no DNS
    if guest_ip:
        resolvers = [guest_ip, *(params[k] for k in ("dns1", "dns2") if params.get(k))]
        if params.get("useextdns") == "true":
            resolvers = resolvers[1:]
        if resolvers:
            lines.append(f"dhcp-option=6,{','.join(resolvers)}")
    if guest and guest.ip6:
        lines.append("dhcp-option=nondefault6,option6:dns-server")
        servers6 = ["[::]", *(f"[{params[k]}]" for k in ("ip6dns1", "ip6dns2") if params.get(k))]
        lines.append(f"dhcp-option=option6:dns-server,{','.join(servers6)}")
    lines.append("dhcp-client-update")
    return "\n".join(lines) + "\n"


def hosts_lines(config: contract.BootConfig) -> list[str]:
    """What router.sh and setup_dnsmasq add to /etc/hosts: the router's name and ``data-server`` (the
    metadata server's name the guests use) on its guest address."""
    guest = config.nics.get(0)
    if not guest or not guest.ip:
        return []
    lines = [f"{guest.ip} data-server"]
    if config.name:
        lines.insert(0, f"{guest.ip} {config.name}")
    if guest.ip6:
        lines.append(f"{guest.ip6} data-server")
    return lines


def configure_dnsmasq(guest: Guest, config: contract.BootConfig) -> None:
    """A router's dnsmasq base configuration, its upstream resolvers, the empty options file CsDhcp fills,
    and /etc/hosts' guest-address names. Other roles: only the upstream resolvers (setup_common writes
    them for every role)."""
    guest.write(DNSMASQ_RESOLV, "".join(f"nameserver {s}\n" for s in config.dns))
    if config.role not in ROLES:
        return
    guest_nic = config.nics.get(0)
    managed = guest.has_program("dhcp_release") and not (guest_nic and guest_nic.ip6)
    guest.write(MANAGED_LEASE, "1\n" if managed else "0\n")
    guest.write(DNSMASQ_CONF, dnsmasq_conf(config, managed))
    if not guest.path(DHCP_OPTS).exists():
        guest.write(DHCP_OPTS, "")
    guest.path(TFTP_ROOT).mkdir(parents=True, exist_ok=True)
    hosts = guest.path("/etc/hosts")
    names = {"data-server", *(config.name and [config.name] or [])}
    kept = [
        line
        for line in (hosts.read_text().splitlines() if hosts.exists() else [])
        if not (len(line.split()) > 1 and set(line.split()[1:]) & names and not line.startswith("127."))
    ]
    guest.write("/etc/hosts", "\n".join([*kept, *hosts_lines(config)]) + "\n")
    guest.log(f"dnsmasq: {DNSMASQ_CONF} written ({'managed' if managed else 'read-only'} leases)")
