"""A connection to the system libvirtd (``qemu:///system``), starting Debian's daemons when none runs.

Containers and CI runners here have no systemd, so when the socket does not answer we start ``virtlogd -d``
(QEMU's console and log files go through it by default) and ``libvirtd -d`` ourselves and wait, bounded,
for the socket to accept a connection.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt

from systemvm.errors import UserError
from systemvm.hosttools import require_tools
from systemvm.progress import say

SYSTEM_URI = "qemu:///system"
LIBVIRTD_SOCKET = Path("/run/libvirt/libvirt-sock")
VIRTLOGD_SOCKET = Path("/run/libvirt/virtlogd-sock")
START_LOCK = Path("/run/lock/systemvm-libvirt-start.lock")
DEV_KVM = Path("/dev/kvm")


def _quiet_libvirt_errors() -> None:
    """libvirt prints every error to stderr by default; we raise our own one-line errors instead."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def _pid_running(name: str) -> bool:
    """True when a process whose executable name is exactly ``name`` runs (reads /proc, no pkill)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == name:
                return True
        except OSError:
            continue
    return False


def _wait_for_socket(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_socket():
            return True
        time.sleep(0.1)
    return path.is_socket()


def _start_daemon(tool: str, socket: Path, timeout: float) -> None:
    require_tools(tool)
    say(f"    starting {tool} (no {socket} yet)")
    result = subprocess.run(
        [shutil.which(tool) or tool, "-d"], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise UserError(
            f"{tool} -d failed ({detail[-1] if detail else f'exit {result.returncode}'}): "
            f"start libvirt yourself or run as root"
        )
    if not _wait_for_socket(socket, timeout):
        raise UserError(f"{tool} started but {socket} did not appear within {timeout:.0f} s: check its logs")


def restore_dev_kvm_group(dev_kvm: Path = DEV_KVM, group: str = "kvm") -> bool:
    """Give ``/dev/kvm`` back to group ``kvm`` (Debian's udev rule) when something changed it.

    A package script run in an image build chroot with the host's /dev bind-mounted can ``chgrp`` the
    host's /dev/kvm to the chroot's kvm group id. libvirtd then finds KVM "not usable" by its QEMU user,
    throws its capability cache away and probes QEMU again on every call (tens of seconds per
    ``defineXML`` on a busy host). Returns True when it repaired the group.
    """
    try:
        wanted = grp.getgrnam(group).gr_gid
        current = dev_kvm.stat().st_gid
    except (KeyError, OSError):
        return False
    if current == wanted or os.geteuid() != 0:
        return False
    os.chown(dev_kvm, -1, wanted)
    say(f"    {dev_kvm} belonged to group id {current}: gave it back to group {group} ({wanted})")
    return True


def _running(tool: str, socket: Path) -> bool:
    return socket.is_socket() and _pid_running(tool)


@contextlib.contextmanager
def _start_lock() -> Iterator[None]:
    """One starter at a time: the matrix's cells start together, and a second ``virtlogd -d`` started while
    the first is taking its pid file fails ("Unable to obtain pidfile"; seen with three cells at once)."""
    START_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(START_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_libvirtd(timeout: float = 30.0) -> None:
    """Make sure virtlogd and libvirtd run; start them (daemonised) when they do not."""
    restore_dev_kvm_group()
    if os.geteuid() != 0 and not LIBVIRTD_SOCKET.is_socket():
        raise UserError("libvirtd is not running and only root can start it: start it or run as root")
    if _running("virtlogd", VIRTLOGD_SOCKET) and _running("libvirtd", LIBVIRTD_SOCKET):
        return
    if os.geteuid() != 0:
        return  # libvirtd's socket answers; virtlogd is its business
    with _start_lock():  # checked again under the lock: another run may have started them meanwhile
        if not _running("virtlogd", VIRTLOGD_SOCKET):
            _start_daemon("virtlogd", VIRTLOGD_SOCKET, timeout)
        if not _running("libvirtd", LIBVIRTD_SOCKET):
            _start_daemon("libvirtd", LIBVIRTD_SOCKET, timeout)


def connect(uri: str = SYSTEM_URI, timeout: float = 30.0) -> libvirt.virConnect:
    """Open ``uri``; for the local system URI start the daemons first when needed. Bounded by ``timeout``."""
    _quiet_libvirt_errors()
    if uri == SYSTEM_URI:
        ensure_libvirtd(timeout)
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            conn = libvirt.open(uri)
            if conn is not None:
                return conn
        except libvirt.libvirtError as exc:
            last = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        if time.monotonic() >= deadline:
            raise UserError(
                f"cannot connect to {uri} ({last}): start libvirtd or check its socket permissions"
            )
        time.sleep(0.2)
