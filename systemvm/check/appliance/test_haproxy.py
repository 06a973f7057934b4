"""HAProxy.

Installed, the shipped configuration is accepted, and the service runs on the roles that use it only (the
routers and the load balancer VMs).
"""

from __future__ import annotations

import pytest

from systemvm import contract
from systemvm.check.appliance.applies import not_applicable

HAPROXY_ROLES = tuple(r for r in contract.ROLES if "haproxy" in contract.ROLE_SERVICES[r][0])


def test_haproxy_is_installed(host) -> None:
    """HAProxy is installed"""
    package = host.package("haproxy")
    assert package.is_installed, "package haproxy is not installed"
    assert host.exists("haproxy"), "the haproxy binary is not on PATH"


def test_haproxy_accepts_the_shipped_configuration(host) -> None:
    """haproxy -c accepts /etc/haproxy/haproxy.cfg"""
    result = host.run("haproxy -c -f /etc/haproxy/haproxy.cfg")
    assert result.rc == 0, (
        f"haproxy -c rejects the configuration: {(result.stderr or result.stdout).strip()[:400]}"
    )


@pytest.mark.live
def test_haproxy_runs_only_on_router_roles(host, params) -> None:
    """HAProxy is active on router roles and inactive elsewhere"""
    state = host.run("systemctl is-active haproxy").stdout.strip()
    if params["role"] in HAPROXY_ROLES:
        assert state == "active", f"haproxy is {state} on a {params['role']}; the role runs it"
    else:
        assert state != "active", (
            f"haproxy is active on a {params['role']}; only the roles that use it run it"
        )


def test_haproxy_is_not_started_at_boot_by_the_image(host, params) -> None:
    """HAProxy is not enabled in the image itself (the role enables it)"""
    if params["kind"] == "vm" and params["role"] in HAPROXY_ROLES:
        not_applicable("the role enables haproxy at boot")
    state = host.run("systemctl is-enabled haproxy").stdout.strip()
    assert state != "enabled", f"haproxy is {state} on a {params['role']}"
