"""What the lab checks share (test_router_traffic.py, test_router_vpn.py, test_storage_traffic.py,
test_console_ports.py): whether they apply, the lab's rules loaded on the router and restored, the router's
files kept, and traffic from the lab's namespaces.

The suite runs on the host, so a lab host's traffic is ``ip netns exec <its namespace> ...``; the lab's
HTTP servers log one line per request with the client address first (:mod:`systemvm.boot.labhttp`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from systemvm.boot.routerlab import rule_commands
from systemvm.check.appliance.target import Params, run_ok

SAVED_RULES = "/root/.svmt-router-lab.rules"
CONNECT_TIMEOUT = 3


def why_not(params: Params, role: str = "router") -> str | None:
    """Why the lab checks for a ``role`` do not apply to this target (None: they do)."""
    if params["kind"] != "vm":
        return "needs a running system VM"
    if params["role"] != role:
        return f"these lab checks are for a {role}, not a {params['role']}"
    if not params.get("lab"):
        return f"this {role} has no network lab around it (a KVM {role} booted by the harness as root)"
    if os.geteuid() != 0:
        return "entering the lab's namespaces needs root"
    return None


def applicable(params: Params, configured: dict[str, Any] | None, role: str = "router") -> dict[str, Any]:
    """What a module fixture configured (a lab dict), or skip the check with the reason it does not apply
    (:func:`why_not`); the gate of every lab check's fixture."""
    reason = why_not(params, role)
    if reason or configured is None:
        pytest.skip(reason or f"the {role} was not configured for these checks")
    return configured


@contextlib.contextmanager
def rules_applied(host: Any, lab: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The router with the lab's rules (``lab["rules"]``, :func:`systemvm.boot.routerlab.rule_commands`);
    every table as it was afterwards (nat and mangle flushed first: what a check put there goes too)."""
    run_ok(host, f"iptables-save > {SAVED_RULES}")
    try:
        for command in rule_commands(lab["rules"]):
            run_ok(host, command)
        yield dict(lab)
    finally:
        run_ok(
            host,
            f"iptables -t nat -F && iptables -t mangle -F && iptables-restore < {SAVED_RULES} "
            f"&& rm -f {SAVED_RULES}",
        )


@contextlib.contextmanager
def files_kept(host: Any, paths: Iterable[str], saved_dir: str) -> Iterator[None]:
    """The router's files at ``paths`` as they were afterwards: each one copied under ``saved_dir`` first and
    put back at the end; a path that did not exist is removed."""
    quoted = " ".join(shlex.quote(path) for path in paths)
    keep = f"[ ! -e $f ] || {{ mkdir -p {saved_dir}$(dirname $f) && cp -p $f {saved_dir}$f; }}"
    run_ok(host, f"mkdir -p {saved_dir} && for f in {quoted}; do {keep}; done")
    try:
        yield
    finally:
        put_back = f"rm -f $f; [ ! -e {saved_dir}$f ] || cp -p {saved_dir}$f $f"
        run_ok(host, f"for f in {quoted}; do {put_back}; done; rm -rf {saved_dir}")


def in_netns(
    lab: dict[str, Any], host_name: str, *command: str, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", lab["netns"][host_name], *command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def fetch(lab: dict[str, Any], host_name: str, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """``curl`` from a lab host; the result (exit status 0 and the body, or curl's error)."""
    return in_netns(
        lab, host_name, "curl", "--silent", "--show-error", "--connect-timeout", str(CONNECT_TIMEOUT),
        "--max-time", str(CONNECT_TIMEOUT + 2), *extra, url,
    )  # fmt: skip


def logged_clients(access_log: str, path: str) -> list[str]:
    """The client addresses an HTTP server of the lab logged for requests of ``path``."""
    log = Path(access_log)
    lines = log.read_text().splitlines() if log.exists() else []
    return [f[0] for f in (line.split() for line in lines) if len(f) > 2 and f[2] == path]


def token() -> str:
    """A request path of its own, so a check reads only its requests in a server's log."""
    return f"/check-{secrets.token_hex(4)}"


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
