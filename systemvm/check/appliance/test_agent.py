"""Agent start.

The cloud service runs the agent on secstorage and consoleproxy, the agent logged its start, and the
management listener heard from it.
"""

from __future__ import annotations

import json

import pytest

from systemvm.contract import AGENT_ROLES

pytestmark = [pytest.mark.live, pytest.mark.applies(roles=AGENT_ROLES)]


def test_cloud_service_is_active(host, params) -> None:
    """The cloud service (the agent) is active"""
    state = host.run("systemctl is-active cloud").stdout.strip()
    assert state == "active", f"systemctl is-active cloud says {state} on a {params['role']}"


def test_cloud_log_says_agent_started(host) -> None:
    """/var/log/cloud.log says `Agent started`"""
    log = host.file("/var/log/cloud.log")
    assert log.exists, "/var/log/cloud.log is missing"
    assert "Agent started" in log.content_string, "/var/log/cloud.log has no `Agent started` line"


def test_management_listener_received_the_startup_message(params) -> None:
    """The management listener received the agent's startup message naming the VM"""
    messages = params.listener_messages()
    assert messages, "the management listener on 8250 received nothing"
    texts = [m if isinstance(m, str) else json.dumps(m) for m in messages]
    naming = [t for t in texts if params["name"] in t]
    assert naming, f"no message names {params['name']}; received: {[t[:120] for t in texts]}"
