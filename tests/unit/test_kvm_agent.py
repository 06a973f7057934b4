"""The command line delivery speaks to a real qemu-ga (Debian's qemu-guest-agent) over a UNIX socket.

In a VM the same JSON goes through libvirt's agent command API; here the agent runs on the host, listening
on a socket, and writes into a temporary directory.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from systemvm.boot.hypervisors import kvm

pytestmark = pytest.mark.skipif(shutil.which("qemu-ga") is None, reason="qemu-guest-agent not installed")


class SocketAgent:
    """A transport to qemu-ga on a UNIX socket: one JSON line out, one JSON line back."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.buffer = b""
        self.sent: list[dict] = []

    def __call__(self, message: str) -> str:
        self.sent.append(json.loads(message))
        self.sock.sendall(message.encode() + b"\n")
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "qemu-ga closed the socket"
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.lstrip(b"\xff").decode()


@pytest.fixture
def agent_socket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "qga.sock"
    proc = subprocess.Popen(
        ["qemu-ga", "-m", "unix-listen", "-p", str(path), "-t", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not path.is_socket() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.is_socket(), "qemu-ga did not create its socket"
        yield path
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_command_line_is_written_through_the_real_agent(agent_socket: Path, tmp_path: Path) -> None:
    agent = SocketAgent(agent_socket)
    target = tmp_path / "cmdline"
    cmdline = "template=domP type=secstorage name=s-1-VM eth0ip=169.254.3.4 eth0mask=255.255.0.0"
    kvm.deliver_cmdline(agent, cmdline, timeout=30, alive=lambda: True, path=str(target))
    assert target.read_text() == cmdline + "\n"
    assert [m["execute"] for m in agent.sent] == [
        "guest-sync",
        "guest-file-open",
        "guest-file-write",
        "guest-file-close",
    ]


def test_agent_errors_are_raised_not_ignored(agent_socket: Path, tmp_path: Path) -> None:
    agent = SocketAgent(agent_socket)
    with pytest.raises(RuntimeError, match="guest-file-open"):
        kvm.write_guest_file(agent, str(tmp_path / "no" / "such" / "dir" / "cmdline"), b"x")


def test_delivery_gives_up_in_bounded_time_when_no_agent_answers(tmp_path: Path) -> None:
    def silent(_message: str) -> str:
        raise OSError("agent not connected")

    with pytest.raises(TimeoutError, match="did not take the command line within 1 s.*agent not connected"):
        kvm.deliver_cmdline(silent, "type=router", timeout=1, alive=lambda: True, path=str(tmp_path / "c"))


def test_delivery_stops_when_the_vm_dies(tmp_path: Path) -> None:
    with pytest.raises(TimeoutError, match="stopped before its guest agent answered"):
        kvm.deliver_cmdline(
            lambda m: "{}", "type=router", timeout=30, alive=lambda: False, path=str(tmp_path)
        )
