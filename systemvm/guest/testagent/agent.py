"""The test agent that runs inside a system VM in place of CloudStack's Java agent (shipped in agent.zip).

It reads the boot command line (arguments ``key=value``, as _run.sh passes /var/cache/cloud/cmdline; else
conf/agent.properties), connects to ``host:port``, sends a startup message naming the VM and its role,
logs ``Agent started`` to /var/log/cloud.log and then sends a heartbeat every few seconds. When the
connection drops it reconnects and announces itself again. Messages are JSON, one per line.
Standard library only: it runs on the image's python3.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

CLOUD_LOG = "/var/log/cloud.log"
PROPERTIES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf", "agent.properties")
VERSION = "testagent-1"


def parse_settings(argv: list[str], properties_text: str = "") -> dict[str, str]:
    """Command-line words ``key=value`` over the properties file's lines."""
    settings: dict[str, str] = {}
    for line in properties_text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith("#"):
            settings[key.strip()] = value.strip()
    for word in argv:
        key, sep, value = word.partition("=")
        if sep:
            settings[key] = value
    return settings


def startup_message(settings: dict[str, str]) -> dict[str, object]:
    return {
        "kind": "startup",
        "name": settings.get("name", socket.gethostname()),
        "role": settings.get("type", "unknown"),
        "version": VERSION,
        "pid": os.getpid(),
    }


def log(message: str, path: str = CLOUD_LOG) -> None:
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} agent: {message}"
    print(line, flush=True)
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError:
        pass


def send(sock: socket.socket, message: dict[str, object]) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


def run(settings: dict[str, str], log_path: str = CLOUD_LOG, max_heartbeats: int | None = None) -> None:
    # host= is CloudStack's comma-separated list of management servers: try them in turn
    hosts = [h for h in settings.get("host", "169.254.0.1").split(",") if h] or ["169.254.0.1"]
    attempt = 0
    port = int(settings.get("port", "8250"))
    interval = float(settings.get("heartbeat", "5"))
    hello = startup_message(settings)
    sent = 0
    announced = False
    while max_heartbeats is None or sent < max_heartbeats:
        host = hosts[attempt % len(hosts)]
        try:
            with socket.create_connection((host, port), timeout=10) as sock:
                send(sock, hello)
                if not announced:
                    log(
                        f"Agent started: {hello['name']} ({hello['role']}) connected to {host}:{port}",
                        log_path,
                    )
                    announced = True
                else:
                    log(f"reconnected to {host}:{port}", log_path)
                while max_heartbeats is None or sent < max_heartbeats:
                    time.sleep(interval)
                    sent += 1
                    send(sock, {"kind": "heartbeat", "name": hello["name"], "seq": sent})
        except OSError as exc:
            log(f"management server {host}:{port} unreachable ({exc}); retrying", log_path)
            attempt += 1
            time.sleep(min(interval, 5.0))


def main(argv: list[str]) -> int:
    try:
        with open(PROPERTIES, encoding="utf-8") as f:
            properties = f.read()
    except OSError:
        properties = ""
    run(parse_settings(argv, properties))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
