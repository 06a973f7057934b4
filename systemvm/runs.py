"""Who owns what a run of this project leaves on the host, and whether that run still lives.

A run that makes state outside its own process (a build's work directories and mounts, its package cache
daemon, a seed's staging directory) writes an owner record (``owner.json``) into it first: the host, the
pid and the kernel's start time of that pid (so a reused pid is not mistaken for the owner). A later run
removes the state only when the owner is dead, or, for state an older version left without a record, when
no process uses it. Nothing here touches state without our names: the callers find it by the names they
gave it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

OWNER_FILE = "owner.json"


def process_start(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    state, start = fields[0], fields[19]
    return None if state in ("Z", "X") else int(start)


def owner_record(pid: int | None = None) -> dict[str, Any]:
    pid = os.getpid() if pid is None else pid
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "start": process_start(pid),
        "program": " ".join(Path(arg).name if i == 0 else arg for i, arg in enumerate(sys.argv[:3])),
    }


def write_owner(directory: Path, pid: int | None = None) -> None:
    """Record this process (or ``pid``) as the owner of ``directory``: written whole or not at all."""
    tmp = Path(directory) / f".{OWNER_FILE}.tmp"
    tmp.write_text(json.dumps(owner_record(pid)) + "\n")
    os.replace(tmp, Path(directory) / OWNER_FILE)


def read_owner(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(directory) / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def owner_alive(record: dict[str, Any]) -> bool | None:
    """True/False for an owner on this host; None for one on another host (it cannot be asked)."""
    if record.get("host") != socket.gethostname():
        return None
    start = process_start(int(record["pid"]))
    return start is not None and (record.get("start") is None or start == record["start"])


def pids() -> list[int]:
    return sorted(int(name) for name in os.listdir("/proc") if name.isdigit())


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def users_of(directory: Path, marker: str | None = None) -> list[int]:
    """Processes (not this one) whose working directory, root, executable or an open file lies under
    ``directory``, whose command line names it, or whose environment holds ``marker``."""
    target = str(Path(directory).resolve())
    found = []
    for pid in pids():
        if pid == os.getpid():
            continue
        base = Path(f"/proc/{pid}")
        with contextlib.suppress(OSError):
            links = [os.readlink(base / name) for name in ("cwd", "root", "exe") if (base / name).exists()]
            with contextlib.suppress(OSError):
                links += [os.readlink(fd) for fd in (base / "fd").iterdir()]
            command = (base / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (base / "environ").read_bytes().decode(errors="replace") if marker else ""
            if (
                any(_inside(link, target) for link in links if link.startswith("/") and target != "/")
                or target in command
                or (marker is not None and marker in environ.split("\0"))
            ):
                found.append(pid)
    return found


def mounts_under(directory: Path) -> list[Path]:
    """Mount points at or under ``directory``, deepest first (the order to unmount them in)."""
    target = str(Path(directory).resolve())
    points = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = _unescape(line.split()[4])
            if _inside(point, target):
                points.append(point)
    return [Path(p) for p in sorted(set(points), key=lambda p: (-p.count("/"), p))]


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (``\\040``)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def unmount_all(directory: Path) -> list[Path]:
    """Unmount everything mounted under ``directory``, deepest first (lazily where busy); what is left."""
    for point in mounts_under(directory):
        done = subprocess.run(["umount", str(point)], capture_output=True, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)
    return mounts_under(directory)


def loop_devices_of(directory: Path) -> list[str]:
    """Loop devices whose backing file lies under ``directory``."""
    target = str(Path(directory).resolve())
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            if _inside(backing.read_text().strip().removesuffix(" (deleted)"), target):
                found.append(f"/dev/{backing.parent.parent.name}")
    return found


def kill_all(found: list[int]) -> None:
    """SIGKILL ``found`` (the processes of a run whose owner is dead) and wait until they are gone."""
    import signal
    import time

    for pid in found:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(process_start(pid) is not None for pid in found) and time.monotonic() < deadline:
        time.sleep(0.1)
