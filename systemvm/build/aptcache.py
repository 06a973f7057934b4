"""A package cache for builds: apt-cacher-ng on 127.0.0.1 with its cache under the user's cache directory.

Why a caching proxy rather than diskimage-builder's shared apt directory: ``debian-minimal`` runs
``apt-get clean`` inside the chroot after bind-mounting that directory, which empties it on every build.
A proxy caches debootstrap's and apt's downloads alike, for both flavours, and with ``--offline`` serves
only from its cache (Offlinemode), so a warm rebuild downloads nothing.

Each instance has its own port, config directory (``conf.<port>``, holding the owner record of
:mod:`systemvm.runs`), pid file and socket; all of them go when the build ends, and :func:`leftovers`
removes those of a build that was killed (its owner dead) before the next build starts.
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
from pathlib import Path

from systemvm import runs
from systemvm.defaults import cache_root
from systemvm.errors import ToolFailed, UserError
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
    runs.write_owner(conf)  # a build killed with SIGKILL leaves the daemon: the next build knows it is ours
    # A config of our own: no distribution remapping (requests go to the mirror they name) and no
    # expiry of package files.
    (conf / "acng.conf").write_text(
        f"CacheDir: {cache}\nLogDir: {logs}\nPort: {port}\nBindAddress: 127.0.0.1\n"
        f"ExThreshold: 0\nOfflinemode: {1 if offline else 0}\nPassThroughPattern: ^$\n"
    )
    pid_file, sock = root / f"acng.{port}.pid", root / f"acng.{port}.sock"
    pid_file.unlink(missing_ok=True)
    try:
        subprocess.run(
            ["apt-cacher-ng", "-c", str(conf), "ForeGround=0", f"PidFile={pid_file}", f"SocketPath={sock}"],
            check=True,
        )
        _wait_listening(port)  # inside the try: a daemon that never listens is stopped too
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(_daemon(root, port))
        pid_file.unlink(missing_ok=True)
        sock.unlink(missing_ok=True)  # the daemon leaves its socket behind: one per run, for good
        shutil.rmtree(conf, ignore_errors=True)


def _daemon(root: Path, port: int | str) -> int | None:
    """The live apt-cacher-ng that runs with ``conf.<port>`` of ``root`` (found by its command line)."""
    needle = f"{root}/conf.{port}".encode()
    for pid in runs.pids():
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if Path(argv[0].decode(errors="replace")).name == "apt-cacher-ng" and needle in argv:
                return pid if runs.process_start(pid) is not None else None
    return None


def _stop(pid: int | None) -> None:
    """SIGTERM the daemon, SIGKILL it if it is still there after 5 s."""
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while runs.process_start(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        if runs.process_start(pid) is not None:
            os.kill(pid, signal.SIGKILL)


LEGACY_GRACE_SECONDS = 120  # an owner-less daemon younger than this may belong to a build just starting


def _unused_legacy(port: str, pid: int) -> bool:
    """An apt-cacher-ng started by an older version (no owner record) is unused when it has run a while,
    no process names its port (a build's diskimage-builder carries it in http_proxy, a clean-room check's
    mmdebstrap on its command line) and no diskimage-builder runs at all."""
    start = runs.process_start(pid)
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    if start is None or uptime - start / os.sysconf("SC_CLK_TCK") < LEGACY_GRACE_SECONDS:
        return False
    needle = f"127.0.0.1:{port}"
    for other in runs.pids():
        if other == pid:
            continue
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{other}/cmdline").read_bytes().decode(errors="replace")
            environ = Path(f"/proc/{other}/environ").read_bytes().decode(errors="replace")
            if needle in command or needle in environ or "disk-image-create" in command:
                return False
    return True


def leftovers() -> list[str]:
    """Remove the apt-cacher-ng daemons, config directories, pid files and sockets that killed builds
    left (their owner dead; an owner-less one only when unused); what was removed, one entry each.
    Another build's live daemon, and anything not named by this module, is never touched."""
    root = cache_root() / "apt-cacher-ng"
    if not root.is_dir():
        return []
    removed = []
    for conf in sorted(root.glob("conf.*")):
        port = conf.name.removeprefix("conf.")
        if not port.isdigit():
            continue
        pid = _daemon(root, port)
        owner = runs.read_owner(conf)
        if owner is not None and runs.owner_alive(owner) is not False:
            continue  # a live build's (or one on another host sharing this cache: not ours to judge)
        if owner is None and pid is not None and not _unused_legacy(port, pid):
            continue
        if owner is None and pid is None and time.time() - conf.stat().st_mtime < LEGACY_GRACE_SECONDS:
            continue  # an older version's build may be about to start its daemon
        _stop(pid)
        for path in (root / f"acng.{port}.pid", root / f"acng.{port}.sock"):
            path.unlink(missing_ok=True)
        shutil.rmtree(conf, ignore_errors=True)
        what = f"apt-cacher-ng on port {port} (pid {pid})" if pid else f"apt-cacher-ng files of port {port}"
        removed.append(f"{what}: {conf.name}, acng.{port}.pid, acng.{port}.sock in {root}")
    for path in sorted([*root.glob("acng.*.sock"), *root.glob("acng.*.pid")]):
        port = path.name.split(".")[1]
        if port.isdigit() and not (root / f"conf.{port}").exists() and _daemon(root, port) is None:
            path.unlink(missing_ok=True)  # a socket or pid file whose daemon and config are gone
            removed.append(str(path))
    return removed


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
    raise ToolFailed(
        f"apt-cacher-ng did not listen on 127.0.0.1:{port}: see {cache_root()}/apt-cacher-ng/log"
    )
