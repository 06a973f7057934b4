"""IPsec.

strongSwan's charon is present and answers, the plugins CloudStack's VPNs need load, and the service is
enabled only where the role needs it.
"""

from __future__ import annotations

import time

import pytest

from systemvm.check.appliance.target import parse_plugins, run_ok
from systemvm.contract import ROLE_SERVICES

CHARON = "/usr/lib/ipsec/charon"
PLUGIN_DIR = "/usr/lib/ipsec/plugins"
# What CloudStack's VPNs configure (site-to-site IKEv1/IKEv2 with PSK, L2TP/IPsec remote access): its
# customer-gateway policies offer aes/3des with md5/sha1/sha2 and MODP groups; 3DES and the ECP groups
# come only from the openssl plugin in Debian 12 (libstrongswan-standard-plugins).
REQUIRED_PLUGINS = (
    "aes",
    "sha1",
    "sha2",
    "md5",
    "hmac",
    "gmp",
    "openssl",
    "random",
    "nonce",
    "x509",
    "pubkey",
    "pkcs1",
    "pem",
    "kernel-netlink",
    "socket-default",
    "stroke",
    "updown",
)
SERVICE = "strongswan-starter"


def test_charon_is_present(host) -> None:
    """strongSwan's charon daemon is present"""
    charon = host.file(CHARON)
    assert charon.exists, f"{CHARON} is missing"
    assert charon.mode & 0o111, f"{CHARON} is not executable"


def test_ipsec_version_answers(host) -> None:
    """`ipsec version` answers"""
    out = run_ok(host, "ipsec version")
    assert "strongSwan" in out, f"`ipsec version` does not name strongSwan: {out.strip()[:200]}"


def test_required_plugin_libraries_are_installed(host) -> None:
    """The plugin libraries CloudStack's VPNs need are installed"""
    present = set(run_ok(host, f"ls {PLUGIN_DIR}").split())
    missing = [p for p in REQUIRED_PLUGINS if f"libstrongswan-{p}.so" not in present]
    assert not missing, f"plugins missing from {PLUGIN_DIR}: {', '.join(missing)}"


CHARON_WAIT = 180.0


@pytest.mark.live
def test_required_plugins_load(host) -> None:
    """charon loads the plugins CloudStack's VPNs need"""
    was_running = host.run("ipsec status").rc == 0
    if not was_running:
        run_ok(host, "ipsec start")
    try:
        listing = None
        # charon answers within seconds on a real CPU; an emulated i386 guest on a loaded host took over 30 s
        deadline = time.monotonic() + CHARON_WAIT
        while listing is None and time.monotonic() < deadline:
            result = host.run("ipsec listplugins")
            if result.rc == 0 and result.stdout.strip():
                listing = result.stdout
            else:
                time.sleep(1)
        assert listing is not None, f"charon did not answer `ipsec listplugins` within {CHARON_WAIT:.0f} s"
    finally:
        if not was_running:
            host.run("ipsec stop")
    loaded = parse_plugins(listing)
    missing = [p for p in REQUIRED_PLUGINS if p not in loaded]
    assert not missing, (
        f"plugins charon did not load: {', '.join(missing)} (loaded: {', '.join(sorted(loaded))})"
    )


def test_ipsec_service_is_enabled_only_where_the_role_needs_it(host, params) -> None:
    """The IPsec service is enabled only where the role needs it"""
    state = host.run(f"systemctl is-enabled {SERVICE}").stdout.strip()
    needed = params["kind"] == "vm" and SERVICE in ROLE_SERVICES[params["role"]][0]
    if needed:
        assert state == "enabled", f"{SERVICE} is {state}; the {params['role']} role needs it"
    else:
        where = f"a {params['role']}" if params["kind"] == "vm" else "the image"
        assert state != "enabled", f"{SERVICE} is enabled on {where}, which does not need it"
