"""A package cache for builds: apt-cacher-ng on 127.0.0.1 with its cache under the user's cache directory.

Why a caching proxy rather than diskimage-builder's shared apt directory: ``debian-minimal`` runs
``apt-get clean`` inside the chroot after bind-mounting that directory, which empties it on every build.
A proxy caches debootstrap's and apt's downloads alike, for both flavours, and with ``--offline`` serves
only from its cache (Offlinemode), so a warm rebuild downloads nothing.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

from systemvm.defaults import cache_root
from systemvm.errors import UserError
from systemvm.hosttools import require_tools


@contextlib.contextmanager
def apt_proxy(offline: bool = False) -> Iterator[str]:
    """Run apt-cacher-ng for the duration of a build; yield its proxy URL."""
    require_tools("apt-cacher-ng")
    root = cache_root() / "apt-cacher-ng"
    cache, logs = root / "cache", root / "log"
    port = _free_low_port()
    # Config, pid file and socket per instance: a build and a clean-room check may each run one at once
    # (sharing the cache), and one must never stop or reconfigure the other's.
    conf = root / f"conf.{port}"
    for directory in (conf, cache, logs):
        directory.mkdir(parents=True, exist_ok=True)
    # A config of our own: no distribution remapping (requests go to the mirror they name) and no
    # expiry of package files.
    (conf / "acng.conf").write_text(
        f"CacheDir: {cache}\nLogDir: {logs}\nPort: {port}\nBindAddress: 127.0.0.1\n"
        f"ExThreshold: 0\nOfflinemode: {1 if offline else 0}\nPassThroughPattern: ^$\n"
    )
    pid_file = root / f"acng.{port}.pid"
    pid_file.unlink(missing_ok=True)
    subprocess.run(
        [
            "apt-cacher-ng",
            "-c",
            str(conf),
            "ForeGround=0",
            f"PidFile={pid_file}",
            f"SocketPath={root}/acng.{port}.sock",
        ],
        check=True,
    )
    try:
        _wait_listening(port)  # inside the try: a daemon that never listens is stopped too
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        pid_file.unlink(missing_ok=True)
        shutil.rmtree(conf, ignore_errors=True)


def _free_low_port() -> int:
    """A free port below 32768: apt-cacher-ng 3.7 fails to bind ports above that (signed 16-bit)."""
    for port in random.sample(range(20000, 32768), 200):
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return port
    raise UserError("no free TCP port in 20000-32767 on 127.0.0.1 for apt-cacher-ng: free one and retry")


def _wait_listening(port: int, timeout: float = 15.0) -> None:
    """The daemon writes its pid file before it listens: wait for the port itself."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise UserError(f"apt-cacher-ng did not listen on 127.0.0.1:{port}: see {cache_root()}/apt-cacher-ng/log")
