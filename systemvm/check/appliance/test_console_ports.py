"""Console proxy ports.

What the public network can reach of the console proxy VM, through the network lab: the ports CloudStack's
console proxy rules open on the public NIC (eth2: HTTPS, HTTP and the VNC port) accept connections from the
public server, and the ports they keep shut (22, SSH's 3922) give no answer at all (the INPUT policy DROP:
a timeout, not a refusal). Only for a console proxy booted inside the lab (``params["lab"]``,
:mod:`systemvm.lab.agentlab`). A test VM runs no console proxy process, so the checks start a listener on
each probed port of the public address over SSH first (one where nothing listens yet): then the firewall,
not a missing process, decides what the public server sees. The listener is stopped afterwards.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from systemvm.check.appliance.lab import applicable, why_not
from systemvm.check.appliance.target import Params, parse_listeners, run_ok

pytestmark = [pytest.mark.live]

ROLE = "consoleproxy"
CONNECT_TIMEOUT = 3.0  # a dropped SYN: the probe gives up; QEMU's tap answers a SYN within milliseconds
LISTENER_PID = "/root/.svmt-console-listener.pid"
# One python3 process in the VM listening on every port given (the kernel completes the handshakes).
LISTENER = (
    "import socket,sys,time\n"
    "socks=[]\n"
    "for port in sys.argv[2:]:\n"
    "    s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "    s.bind((sys.argv[1],int(port))); s.listen(16); socks.append(s)\n"
    "time.sleep(3600)\n"
)
# The probe run in the public server's namespace: open, refused or timeout, as the TCP handshake ends.
PROBE = (
    "import socket,sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=float(sys.argv[3])).close()\n"
    "    print('open')\n"
    "except ConnectionRefusedError:\n"
    "    print('refused')\n"
    "except (TimeoutError,socket.timeout):\n"
    "    print('timeout')\n"
)


def probe(lab: dict[str, Any], port: int) -> str:
    """``open``, ``refused`` or ``timeout``: a TCP connection from the public server to the proxy's port."""
    argv = ["ip", "netns", "exec", lab["netns"]["server"], sys.executable, "-c", PROBE,
            lab["public_ip"], str(port), str(CONNECT_TIMEOUT)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=CONNECT_TIMEOUT + 30, check=False)
    assert done.returncode == 0, f"the probe of port {port} failed: {done.stderr.strip()[-300:]}"
    return done.stdout.strip()


def bound_ports(host: Any, ip: str) -> set[int]:
    """The TCP ports something in the VM listens on at ``ip`` (or on every address)."""
    listeners = parse_listeners(run_ok(host, "ss -Htln"))
    return {port for address, port, _ in listeners if address in (ip, "0.0.0.0", "*", "::")}


@pytest.fixture(scope="module")
def listening(host: Any, params: Params) -> Iterator[dict[str, Any] | None]:
    """A listener on the public address for every probed port nothing listens on yet; stopped afterwards.
    None where the checks do not apply."""
    if why_not(params, ROLE):
        yield None
        return
    lab = dict(params["lab"])
    ip = lab["public_ip"]
    taken = bound_ports(host, ip)
    ports = [p for p in [*lab["ports"]["open"], *lab["ports"]["closed"]] if p not in taken]
    if ports:
        args = " ".join(str(p) for p in ports)
        run_ok(host, f"nohup setsid python3 -c {shlex.quote(LISTENER)} {ip} {args} >/dev/null 2>&1 & "
                     f"echo $! > {LISTENER_PID}")  # fmt: skip
    try:
        run_ok(host, "sleep 1")
        missing = sorted(set(ports) - bound_ports(host, ip))
        assert not missing, f"could not listen on {ip} port(s) {missing} in the VM"
        yield lab
    finally:
        if ports:
            host.run(f"kill $(cat {LISTENER_PID}); rm -f {LISTENER_PID}")


@pytest.fixture
def lab(params: Params, listening: dict[str, Any] | None) -> dict[str, Any]:
    return applicable(params, listening, ROLE)


def test_the_public_ports_accept_connections_from_the_public_network(lab: dict[str, Any]) -> None:
    """The console proxy's public ports (443, 80, the VNC port) accept connections from the public network"""
    seen = {port: probe(lab, port) for port in lab["ports"]["open"]}
    shut = {port: how for port, how in seen.items() if how != "open"}
    assert not shut, f"ports of {lab['public_ip']} the console proxy rules open, not open: {shut}"


def test_other_ports_are_dropped_on_the_public_address(lab: dict[str, Any]) -> None:
    """Other ports of the public address (22, 3922, 8001) are dropped: no answer, though something listens"""
    seen = {port: probe(lab, port) for port in lab["ports"]["closed"]}
    answered = {port: how for port, how in seen.items() if how != "timeout"}
    assert not answered, (
        f"ports of {lab['public_ip']} the firewall must drop answered (open: reached the listener; refused: "
        f"rejected, not dropped): {answered}"
    )
