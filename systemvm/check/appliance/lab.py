"""What the lab checks share (test_router_traffic.py, test_router_vpn.py, test_storage_traffic.py,
test_console_ports.py): whether they apply, the router configured by the model of CloudStack's handlers and
restored, the router's files kept, and traffic from the lab's namespaces.

The suite runs on the host, so a lab host's traffic is ``ip netns exec <its namespace> ...``; the lab's
HTTP servers log one line per request with the client address first (:mod:`systemvm.lab.httpd`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import shlex
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from systemvm import contract
from systemvm.check.appliance.applies import not_applicable
from systemvm.check.appliance.target import Params, run_ok
from systemvm.lab import csnetfilter, routerlab, updateconfig
from systemvm.lab.updateconfig import HandlerOutput, RouterSettings

SAVED_RULES = "/root/.svmt-router-lab.rules"
SAVED_FILES = "/root/.svmt-router-lab.files"
CONNECT_TIMEOUT = 3


def lab_applies(params: Params, role: str = "router") -> bool:
    """The lab checks of ``role`` apply to every KVM VM of that role: the suite boots each one in a lab."""
    return params["kind"] == "vm" and params["role"] == role and params.get("hypervisor", "kvm") == "kvm"


def why_not(params: Params, role: str = "router") -> str | None:
    """Why the lab checks for a ``role`` cannot run on this target (None: they can)."""
    if params["kind"] != "vm":
        return "needs a running system VM"
    if params["role"] != role:
        return f"these lab checks are for a {role}, not a {params['role']}"
    if params.get("hypervisor", "kvm") != "kvm":
        return f"the network lab is built around KVM VMs, not a {role} on {params['hypervisor']}"
    if not params.get("lab"):
        return f"this {role} has no network lab around it (a KVM {role} booted by the harness as root)"
    if os.geteuid() != 0:
        return "entering the lab's namespaces needs root"
    return None


def applicable(params: Params, configured: dict[str, Any] | None, role: str = "router") -> dict[str, Any]:
    """What a module fixture configured (a lab dict), else skip the check with the reason it cannot run
    (:func:`why_not`); the gate of every lab check's fixture. Where the checks apply (:func:`lab_applies`)
    that skip fails the check (:mod:`systemvm.check.appliance.applies`): a KVM VM of the role booted
    without its lab, or a suite not run as root, tested nothing."""
    reason = why_not(params, role)
    if reason is None and configured is not None:
        return configured
    if not lab_applies(params, role):
        not_applicable(reason or f"the lab checks are for a KVM {role}")
    pytest.skip(reason or f"the {role} was not configured for these checks")


@dataclasses.dataclass(frozen=True)
class CommandResult:
    command: str
    status: int
    output: str


@dataclasses.dataclass
class Applied:
    """What the configuration step did: the rules the router had before (``iptables-save``), the
    handlers' commands and CsNetfilter's with their results, in order."""

    boot_rules: str
    handlers: list[HandlerOutput]
    netfilter: list[csnetfilter.Command]
    results: list[CommandResult]

    def failed(self, needle: str = "") -> list[CommandResult]:
        """The commands (containing ``needle``) that exited non-zero."""
        return [r for r in self.results if r.status != 0 and needle in r.command]


def run_commands(host: Any, commands: Sequence[str]) -> list[CommandResult]:
    """``commands`` run one after another on the router in one shell, each one's exit status and output
    kept and none stopping the others: CloudStack's CsHelper runs its commands the same way, logging a
    failure and going on."""
    if not commands:
        return []
    marker = f"@@svmt-{secrets.token_hex(4)}"
    script = "\n".join(
        f"printf '\\n{marker} {i}\\n'; ( {command}\n) 2>&1; printf '\\n{marker} {i} %s\\n' $?"
        for i, command in enumerate(commands)
    )
    output = host.run(script).stdout
    results = []
    for i, command in enumerate(commands):
        found = re.search(rf"{marker} {i}\n(.*)\n{marker} {i} (\d+)\n", output, re.S)
        assert found, f"no result for `{command}` in the router's output: {output[-2000:]}"
        results.append(CommandResult(command, int(found.group(2)), found.group(1).strip()))
    return results


def read_files(host: Any, paths: Iterable[str]) -> dict[str, str | None]:
    """The router's files at ``paths`` (None: missing)."""
    texts: dict[str, str | None] = {}
    for path in paths:
        file = host.file(path)
        texts[path] = file.content_string if file.exists else None
    return texts


def router_settings(params: Params) -> RouterSettings:
    """What the router's handlers read from its command line (the one the harness sent)."""
    return RouterSettings.from_cmdline(params.get("cmdline") or "")


def lab_macs(lab: dict[str, Any]) -> dict[str, str]:
    """Each lab host's MAC (the DHCP entries name the VMs by it)."""
    return {
        name: in_netns(lab, name, "cat", "/sys/class/net/eth0/address").stdout.strip()
        for name in lab["netns"]
    }


def traffic_handlers(host: Any, params: Params) -> list[HandlerOutput]:
    """What the lab's management server has the router's handlers do for the traffic checks
    (:func:`systemvm.lab.routerlab.router_handlers`), from the router's command line, the lab hosts' MACs
    and the router's files the handlers edit."""
    lab = params["lab"]
    previous = read_files(host, updateconfig.PREVIOUS_FILES)
    return routerlab.router_handlers(
        routerlab.plan_of(lab), router_settings(params), lab_macs(lab), lab, previous
    )


SERVICES_RESTORED = ("dnsmasq", "apache2", "haproxy")


@contextlib.contextmanager
def handlers_applied(
    host: Any, role: str, handlers: Sequence[HandlerOutput], without: Iterable[str] = ()
) -> Iterator[Applied]:
    """The router configured as CloudStack's ``update_config.py`` configures it with these handlers'
    output, and everything as it was afterwards.

    In order: each handler's files written exactly (nothing else is), its commands run; then CsNetfilter's
    commands (:func:`systemvm.lab.csnetfilter.compare`) for the handlers' rules (without the groups
    ``without``), computed against the router's live ``iptables-save`` and its role's
    /etc/iptables/iptables-<role>, run one by one; then ``iptables-save`` saved to /etc/iptables/rules.v4
    and ``ip6tables-save`` to rules.v6, as IpTablesExecutor does. Afterwards: the tables restored as
    ``iptables-save`` showed them before (a table that was not there is emptied), the ipsets the handlers
    created destroyed, the files put back, and dnsmasq, apache2 and haproxy restarted or stopped as they
    were."""
    boot_rules = run_ok(host, "iptables-save")
    run_ok(host, f"iptables-save > {SAVED_RULES}")
    paths = sorted({p for h in handlers for p in h.files} | {contract.RULES_V4_PATH, contract.RULES_V6_PATH})
    was_active = {s: host.run(f"systemctl is-active -q {s}").rc == 0 for s in SERVICES_RESTORED}
    ipsets = sorted({n for h in handlers for c in h.commands for n in re.findall(r"ipset create (\S+)", c)})
    try:
        with files_kept(host, paths, SAVED_FILES):
            try:
                results: list[CommandResult] = []
                for handler in handlers:
                    for command in routerlab.write_commands(handler.files):
                        run_ok(host, command)
                    results += run_commands(host, handler.commands)
                desired = updateconfig.desired_rules(handlers, without)
                role_rules = read_files(host, [contract.rules_file(role)]).popitem()[1]
                netfilter = csnetfilter.compare(run_ok(host, "iptables-save"), desired, role_rules)
                results += run_commands(host, [c.command for c in netfilter])
                run_ok(
                    host,
                    f"iptables-save > {contract.RULES_V4_PATH} && ip6tables-save > {contract.RULES_V6_PATH}",
                )
                yield Applied(boot_rules, list(handlers), netfilter, results)
            finally:
                empty_new_tables = (  # a table iptables-restore leaves alone: the boot had none
                    f'for t in nat mangle raw; do if iptables-save | grep -q "^\\*$t" '
                    f'&& ! grep -q "^\\*$t" {SAVED_RULES}; '
                    "then iptables -t $t -F && iptables -t $t -X; fi; done"
                )
                run_ok(host, f"{empty_new_tables}; iptables-restore < {SAVED_RULES} && rm -f {SAVED_RULES}")
                if ipsets:  # no longer referenced by a rule
                    host.run(f"for s in {' '.join(ipsets)}; do ipset destroy $s; done")
    finally:
        for service, active in was_active.items():
            host.run(f"systemctl restart {service}" if active else f"systemctl stop {service}")


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
