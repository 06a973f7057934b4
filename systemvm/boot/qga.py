"""A small qemu-guest-agent client over QEMU's UNIX socket chardev, for plain-QEMU boots.

It does what CloudStack's KVM host does through libvirt: ``guest-sync``, then ``guest-file-open``,
``guest-file-write`` (base64) and ``guest-file-close`` to write /var/cache/cloud/cmdline.
(The libvirt driver uses libvirt's agent command API for the same calls.)
"""

from __future__ import annotations

import base64
import json
import random
import socket
import time
from pathlib import Path

CMDLINE_PATH = "/var/cache/cloud/cmdline"


class AgentUnavailable(Exception):
    pass


class GuestAgent:
    def __init__(self, socket_path: Path, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""

    def __enter__(self) -> GuestAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect(str(self.socket_path))
            self._sock = sock
            self._buffer = b""
        return self._sock

    def _read_reply(self) -> dict:
        sock = self._connect()
        while b"\n" not in self._buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise AgentUnavailable("guest agent closed the channel")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        # A 0xff sync byte may precede replies after guest-sync-delimited; plain guest-sync has none.
        return json.loads(line.lstrip(b"\xff").decode())

    def command(self, name: str, **arguments: object) -> object:
        message: dict[str, object] = {"execute": name}
        if arguments:
            message["arguments"] = arguments
        self._connect().sendall(json.dumps(message).encode() + b"\n")
        reply = self._read_reply()
        if "error" in reply:
            raise AgentUnavailable(f"{name}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    def sync(self) -> None:
        """guest-sync with a random id; stale replies from an earlier connection are skipped."""
        token = random.randint(1, 2**31 - 1)
        self._connect().sendall(
            json.dumps({"execute": "guest-sync", "arguments": {"id": token}}).encode() + b"\n"
        )
        while True:
            reply = self._read_reply()
            if reply.get("return") == token:
                return

    def write_file(self, path: str, data: bytes) -> None:
        handle = self.command("guest-file-open", path=path, mode="w")
        try:
            self.command("guest-file-write", handle=handle, **{"buf-b64": base64.b64encode(data).decode()})
        finally:
            self.command("guest-file-close", handle=handle)


def deliver_cmdline(socket_path: Path, cmdline: str, deadline: float) -> float:
    """Retry until the guest agent answers, then write the command line. Returns seconds it took."""
    start = time.monotonic()
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with GuestAgent(socket_path, timeout=5.0) as agent:
                agent.sync()
                agent.write_file(CMDLINE_PATH, cmdline.encode() + b"\n")
                return time.monotonic() - start
        except (OSError, AgentUnavailable, json.JSONDecodeError) as exc:
            last = exc
            time.sleep(2.0)
    raise TimeoutError(f"qemu-guest-agent did not accept the command line in time (last error: {last})")
