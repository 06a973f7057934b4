"""The harness's stand-in for the management server's agent port: records who connected and their heartbeats.

A threaded TCP server on 127.0.0.1 (QEMU user networking turns the guest's 169.254.0.1 into the host's
127.0.0.1). Agents send JSON lines: a ``startup`` message naming the VM and its role, then ``heartbeat``
messages; each startup is answered with ``{"kind": "ack"}``.

    with ManagementListener() as listener:
        ... boot a VM with mgmt_port=listener.port ...
        agent = listener.wait_for_startup("s-1-VM", timeout=300)
"""

from __future__ import annotations

import dataclasses
import json
import socketserver
import threading
import time


@dataclasses.dataclass
class AgentRecord:
    name: str
    role: str
    startups: list[dict] = dataclasses.field(default_factory=list)
    heartbeats: int = 0
    last_seen: float = 0.0
    peers: list[str] = dataclasses.field(default_factory=list)


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        for raw in self.rfile:
            try:
                message = json.loads(raw)
            except ValueError:
                self.server.listener._note_garbage(raw)
                continue
            if not isinstance(message, dict):
                continue
            self.server.listener._record(message, peer)
            if message.get("kind") == "startup":
                self.wfile.write(b'{"kind": "ack"}\n')


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    listener: ManagementListener


class ManagementListener:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _Server((host, port), _Handler)
        self._server.listener = self
        self._thread: threading.Thread | None = None
        self._changed = threading.Condition()
        self.agents: dict[str, AgentRecord] = {}
        self.messages: list[dict] = []  # every message, in arrival order
        self.garbage: list[bytes] = []

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> ManagementListener:
        self._thread = threading.Thread(target=self._server.serve_forever, name="mgmt-listener", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> ManagementListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _record(self, message: dict, peer: str) -> None:
        name = str(message.get("name", "?"))
        with self._changed:
            self.messages.append(message)
            record = self.agents.setdefault(name, AgentRecord(name=name, role=str(message.get("role", "?"))))
            record.last_seen = time.monotonic()
            if message.get("kind") == "startup":
                record.role = str(message.get("role", record.role))
                record.startups.append(message)
                if peer not in record.peers:
                    record.peers.append(peer)
            elif message.get("kind") == "heartbeat":
                record.heartbeats += 1
            self._changed.notify_all()

    def _note_garbage(self, raw: bytes) -> None:
        with self._changed:
            self.garbage.append(raw)

    def wait_for(self, name: str, heartbeats: int = 0, timeout: float = 300.0) -> AgentRecord:
        """Block until ``name`` announced itself and sent ``heartbeats`` heartbeats; TimeoutError if not."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                record = self.agents.get(name)
                if record is not None and record.startups and record.heartbeats >= heartbeats:
                    return dataclasses.replace(
                        record, startups=list(record.startups), peers=list(record.peers)
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = ", ".join(f"{r.name}({len(r.startups)} startups, {r.heartbeats} beats)"
                                     for r in self.agents.values()) or "nobody"  # fmt: skip
                    raise TimeoutError(
                        f"agent {name} did not report ({heartbeats} heartbeats wanted) in {timeout:.0f}s; "
                        f"seen: {seen}"
                    )
                self._changed.wait(remaining)

    def wait_for_startup(self, name: str, timeout: float = 300.0) -> AgentRecord:
        return self.wait_for(name, 0, timeout)
