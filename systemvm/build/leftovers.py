"""What a build leaves on the host when it is killed (SIGKILL, a lost host), found by our own names and
removed before the next build starts (:func:`sweep`, also ``invoke clean``).

A build owns, each with an owner record (:mod:`systemvm.runs`) written as it is made:

- its **run directory** ``<tmp>/systemvm-build-<flavour>-*/``, diskimage-builder's ``TMP_DIR``: the
  ``dib_build.*`` and ``dib_image.*`` directories with their tmpfs mounts (the root filesystem being
  built, about 1.1 GiB of RAM) and the chroot's proc, dev, dev/pts, sys and in_target.d mounts inside;
  every process of the build carries ``SYSTEMVM_BUILD_RUN=<run directory>`` in its environment;
- its **work directory** ``artifacts/<version>/.build-<flavour>-*/``;
- its **apt-cacher-ng** (:func:`systemvm.build.aptcache.leftovers`).

What a killed build's owner no longer runs is removed: its processes killed, its mounts unmounted deepest
first (lazily where still busy), its loop devices detached, then the directory; a directory that still has
a mount under it is never removed (a recursive delete would reach into the host's /dev). What an older
version of this project left without an owner record (``/tmp/dib_build.*`` holding our elements' hooks,
``.build-*`` directories) is removed only while no diskimage-builder runs on the host and nothing uses it.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from systemvm import defaults, runs
from systemvm.build import aptcache

RUN_PREFIX = "systemvm-build-"
RUN_ENV = "SYSTEMVM_BUILD_RUN"
WORK_PREFIX = ".build-"
LEGACY_IDLE_SECONDS = 600  # an owner-less work directory untouched this long is no live build's


def new_run_dir(flavour: str) -> Path:
    """A run directory for one flavour's diskimage-builder, owned by this process."""
    run = Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{flavour}-", dir=tempfile.gettempdir()))
    runs.write_owner(run)
    return run


def new_work_dir(out_dir: Path, flavour: str) -> Path:
    work = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{flavour}-", dir=out_dir))
    runs.write_owner(work)
    return work


def remove_run(run: Path, marker: str | None = None) -> str | None:
    """Kill what still runs in ``run``, unmount, detach its loop devices and remove it; None when removed,
    else why not (a mount that would not go)."""
    users = runs.users_of(run, marker)
    runs.kill_all(users)
    left = runs.unmount_all(run)
    for device in runs.loop_devices_of(run):
        subprocess.run(["losetup", "-d", device], capture_output=True, check=False)
    if left:
        return f"still mounted: {', '.join(map(str, left))}"
    shutil.rmtree(run, ignore_errors=True)
    return None


def _dead(directory: Path) -> bool | None:
    """True when the owner record names a dead process; None without a record (an older version's)."""
    owner = runs.read_owner(directory)
    if owner is None:
        return None
    return runs.owner_alive(owner) is False


def _dib_running() -> bool:
    for pid in runs.pids():
        with contextlib.suppress(OSError):
            if b"disk-image-create" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
    return False


def _ours_legacy_dib(directory: Path) -> bool:
    """A ``dib_build.*`` directory an older version left: its hooks hold one of our elements' scripts."""
    hooks = directory / "hooks"
    for element in defaults.elements_dir().glob("systemvm-*"):
        for script in element.glob("*.d/*"):
            if (hooks / script.parent.name / script.name).is_file():
                return True
    return False


def _newest_change(directory: Path) -> float:
    newest = directory.stat().st_mtime
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            newest = max(newest, entry.lstat().st_mtime)
    return newest


def sweep(artifacts: Path | None = None) -> list[str]:
    """Remove what killed builds left (see the module docstring); one line per thing removed."""
    said: list[str] = []
    tmp = Path(tempfile.gettempdir())
    for run in sorted(tmp.glob(f"{RUN_PREFIX}*")):
        if run.is_dir() and _dead(run) is not False and (_dead(run) or not runs.users_of(run)):
            mounts = len(runs.mounts_under(run))
            why_not = remove_run(run, f"{RUN_ENV}={run}")
            said.append(
                f"{run} ({mounts} mounts)"
                if why_not is None
                else f"{run} NOT removed ({why_not}): unmount it"
            )
    dib_idle = not _dib_running()
    if dib_idle:  # what an older version left in /tmp itself: only while no diskimage-builder runs
        builds = [d for d in sorted(tmp.glob("dib_build.*")) if d.is_dir() and _ours_legacy_dib(d)]
        images = [
            d
            for d in sorted(tmp.glob("dib_image.*"))
            if d.is_dir() and any(abs(d.stat().st_ctime - b.stat().st_ctime) < 5 for b in builds)
        ]
        for directory in [*builds, *images]:
            if runs.users_of(directory):
                continue
            mounts = len(runs.mounts_under(directory))
            why_not = remove_run(directory)
            said.append(
                f"{directory} ({mounts} mounts)"
                if why_not is None
                else f"{directory} NOT removed ({why_not}): unmount it"
            )
    if artifacts is not None and Path(artifacts).is_dir():
        for work in sorted(Path(artifacts).glob(f"*/{WORK_PREFIX}*")):
            dead = _dead(work)
            if not work.is_dir() or dead is False:
                continue
            if dead is None and (
                not dib_idle
                or runs.users_of(work)
                or time.time() - _newest_change(work) < LEGACY_IDLE_SECONDS
            ):
                continue
            why_not = remove_run(work)
            said.append(str(work) if why_not is None else f"{work} NOT removed ({why_not})")
    said += aptcache.leftovers()
    return said


def report(said: list[str], when: str) -> None:
    from systemvm.progress import say

    if said:
        say(f"==> {when}: removed what killed runs left")
        for line in said:
            say(f"    removed {line}")


__all__ = ["RUN_ENV", "new_run_dir", "new_work_dir", "remove_run", "report", "sweep"]
