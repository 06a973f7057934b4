"""The network lab's HTTP server (stdlib only): run inside a lab namespace by :mod:`systemvm.lab.netlab`.

Two uses, one program, so both log the same way:

- a web backend (``--name web1``, no ``--root``) answers every GET with its own name, so a load balancer's
  round-robin shows in the bodies;
- the public server (``--root DIR``) serves the files of ``DIR``, as a download site does.

Every request is one line in ``--log``: the client address the server sees, the method, the path and the
status. That address is the point: behind the router's SNAT it is the router's public address, through a
port forward it is the original client's, through HAProxy it is the router's guest address.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import sys
from typing import Any


class LabHandler(http.server.SimpleHTTPRequestHandler):
    """Files from ``directory`` (the public server) or the server's name (a backend), one log line each."""

    def __init__(self, *args: Any, name: str, log_path: str, serve_files: bool, **kwargs: Any) -> None:
        self.lab_name = name
        self.log_path = log_path
        self.serve_files = serve_files
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        if self.serve_files:
            super().do_GET()
            return
        body = f"{self.lab_name}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Lab-Server", self.lab_name)
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        code = getattr(code, "value", code)
        with open(self.log_path, "a") as log:
            log.write(f"{self.client_address[0]} {self.command} {self.path} {code}\n")

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.lab_name}: {format % args}\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--root", help="serve the files of this directory (else answer with --name)")
    parser.add_argument("--log", required=True, help="one line per request: client method path status")
    args = parser.parse_args(argv)
    handler = functools.partial(
        LabHandler,
        name=args.name,
        log_path=args.log,
        serve_files=args.root is not None,
        directory=args.root or ".",
    )
    server = http.server.ThreadingHTTPServer((args.bind, args.port), handler)
    server.daemon_threads = True
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
