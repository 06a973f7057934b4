"""apache's configuration as CloudStack's boot leaves it (``setup_apache2``, ``clean_ipalias_config`` and
``setup_apache2_common`` in systemvm/debian/opt/cloud/bin/setup/common.sh; ``setup_secstorage`` in
setup/secstorage.sh).

CloudStack's boot empties apache's sites and drops ports.conf, so apache listens on nothing of Debian's: the
virtual hosts CloudStack's scripts write (``CsApache`` on a router's guest address, at boot through
postinit's update_config.py and again whenever the management server configures the router; the storage
VM's on its public address, by secstorage.sh) are the only ones, and bind their own addresses. The boot
writes the same one virtual host here. Left as Debian ships it, the default site holds ``*:80`` and apache
cannot start once such a virtual host asks for ``<address>:80``.
"""

from __future__ import annotations

import re

from systemvm import contract
from systemvm.guest.system import Guest

APACHE_DIR = "/etc/apache2"
# Roles whose boot runs CloudStack's setup_apache2 (router.sh, dhcpsrvr.sh, vpcrouter.sh, secstorage.sh).
ROLES = ("router", "dhcpsrvr", "vpcrouter", "secstorage")
INCLUDE_PORTS = re.compile(r"^Include ports\.conf", re.M)


def clean_apache(guest: Guest) -> list[str]:
    """Remove Debian's (and any earlier boot's) sites, ports.conf and alias vhosts; comment out the
    ``Include ports.conf`` line; no directory listings. Returns what was removed."""
    removed = []
    root = guest.path(APACHE_DIR)
    patterns = ("conf.d/ports.*.meta-data.conf", "sites-available/*", "sites-enabled/*", "conf.d/vhost*.conf",
                "ports.conf", "vhostexample.conf")  # fmt: skip
    for pattern in patterns:
        for path in sorted(root.glob(pattern)):
            if path.is_file() or path.is_symlink():
                path.unlink()
                removed.append(f"{APACHE_DIR}/{path.relative_to(root)}")
    conf = guest.path(f"{APACHE_DIR}/apache2.conf")
    if conf.is_file():
        text = conf.read_text()
        if INCLUDE_PORTS.search(text):
            note = "# Commented out at boot: each virtual host written later names its own address (Listen)\n"
            guest.write(f"{APACHE_DIR}/apache2.conf", INCLUDE_PORTS.sub(note + "#Include ports.conf", text))
    alias = guest.path(f"{APACHE_DIR}/mods-available/alias.conf")
    if alias.is_file():
        text = alias.read_text()
        if "Options Indexes MultiViews" in text:
            listing_off = text.replace("Options Indexes MultiViews", "Options -Indexes MultiViews")
            guest.write(f"{APACHE_DIR}/mods-available/alias.conf", listing_off)
    if guest.path("/var/www/html").is_dir():
        guest.write("/var/www/html/.htaccess", "Options -Indexes\n")
    return removed


DOC_ROOT = "/var/www/html"
SNAKEOIL = ("/etc/ssl/certs/ssl-cert-snakeoil.pem", "/etc/ssl/private/ssl-cert-snakeoil.key")
# What secstorage.sh enables for its virtual host (uploads are proxied to the agent's server on 8210).
STORAGE_MODULES = ("proxy", "proxy_http", "headers")


def public_ip(config: contract.BootConfig) -> str | None:
    """The storage VM's public address: the NIC ``public.network.device`` names, else eth2."""
    device = config.params.get("public.network.device", f"eth{contract.PUBLIC_NIC_INDEX}")
    nic = config.nics.get(int(device[3:])) if re.fullmatch(r"eth\d+", device) else None
    return nic.ip if nic else None


def vhost(ip: str, written_as: str) -> str:
    """A virtual host on one address, in the shape CloudStack's vhost.template takes once its scripts put
    the address in: HTTP on 80 and, with mod_ssl, HTTPS on 443, from /var/www/html (where the storage
    resource links downloads, and a router's metadata server keeps its files)."""
    return "\n".join([
        f"# Written by cloud-early-config at boot, as {written_as} writes it: this address only.",
        f"<VirtualHost {ip}:80>",
        f"\tDocumentRoot {DOC_ROOT}",
        f"\t<Directory {DOC_ROOT}>",
        "\t\tOptions -Indexes +FollowSymLinks",
        "\t\tAllowOverride All",
        "\t\tRequire all granted",
        "\t</Directory>",
        "\tIncludeOptional /etc/apache2/http.conf",
        "</VirtualHost>",
        "<IfModule mod_ssl.c>",
        f"<VirtualHost {ip}:443>",
        f"\tDocumentRoot {DOC_ROOT}",
        "\tSSLEngine on",
        f"\tSSLCertificateFile {SNAKEOIL[0]}",
        f"\tSSLCertificateKeyFile {SNAKEOIL[1]}",
        "\tIncludeOptional /etc/apache2/https.conf",
        "</VirtualHost>",
        "</IfModule>",
        f"Listen {ip}:80",
        "<IfModule mod_ssl.c>",
        f"\tListen {ip}:443",
        "</IfModule>",
        "",
    ])  # fmt: skip


def enable_modules(guest: Guest, modules: tuple[str, ...]) -> None:
    """a2enmod's effect: mods-enabled links to each module's .load and .conf (only the files that exist)."""
    for module in modules:
        for suffix in (".load", ".conf"):
            source = guest.path(f"{APACHE_DIR}/mods-available/{module}{suffix}")
            link = guest.path(f"{APACHE_DIR}/mods-enabled/{module}{suffix}")
            if source.is_file() and not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.unlink(missing_ok=True)  # a dangling link
                link.symlink_to(f"../mods-available/{module}{suffix}")


# Who writes the one virtual host a role has at boot: the storage VM's setup script on its public address;
# on a router's guest address, CloudStack's CsApache, run at boot by postinit's update_config.py (the
# image has none of CloudStack's scripts, so the boot writes what CsApache would).
VHOST_WRITERS = {"secstorage": "secstorage.sh", "router": "CsApache", "dhcpsrvr": "CsApache"}


def vhost_address(config: contract.BootConfig) -> str | None:
    """The address the role's boot-time virtual host binds: the storage VM's public one, a router's guest
    one (eth0)."""
    if config.role == "secstorage":
        return public_ip(config)
    guest = config.nics.get(0)
    return guest.ip if guest else None


def configure_apache(guest: Guest, config: contract.BootConfig) -> None:
    role = config.role
    if role not in ROLES or not guest.path(APACHE_DIR).is_dir():
        return
    removed = clean_apache(guest)
    guest.log(f"apache: {len(removed)} site and port files removed")
    if role not in VHOST_WRITERS:
        return
    ip = vhost_address(config)
    if not ip:
        guest.log(f"apache: no address for the {role}'s virtual host on the command line; none written")
        return
    guest.write(f"{APACHE_DIR}/sites-enabled/vhost-{ip}.conf", vhost(ip, VHOST_WRITERS[role]))
    if role == "secstorage":
        enable_modules(guest, STORAGE_MODULES)
    guest.log(f"apache: the {role}'s virtual host on {ip}")
