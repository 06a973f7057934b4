"""A real build killed with SIGKILL (as a host losing power ends it) leaves its tmpfs, the chroot's mounts,
its package cache daemon and its work directories; ``invoke clean`` (what every build runs first) removes
all of it, and nothing of another run. The build is killed as soon as diskimage-builder has mounted proc,
dev, sys and the hooks (in_target.d) in the chroot: with a warm package cache, the unpacking of the cached
bootstrap and the root.d phase."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from systemvm import runs
from systemvm.build import aptcache, leftovers
from systemvm.defaults import DEFAULT_VERSION, cache_root

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="a build needs root")]
REPO = Path(__file__).resolve().parents[2]
MOUNTS_WAIT = 1200  # a cold package cache bootstraps first (4 min here); a warm one unpacks in seconds


def owned_by(pid: int, pattern: str, where: Path) -> list[Path]:
    return [d for d in sorted(where.glob(pattern)) if (runs.read_owner(d) or {}).get("pid") == pid]


def test_a_build_killed_with_sigkill_leaves_nothing_after_invoke_clean(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    log = tmp_path / "build.out"
    with open(log, "wb") as out:
        build = subprocess.Popen(
            [sys.executable, "-m", "invoke", "build", "--flavour", "amd64", "--no-export",
             "--artifacts", str(artifacts)],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    started = time.monotonic()
    run: Path | None = None
    try:
        while True:
            found = owned_by(build.pid, f"{leftovers.RUN_PREFIX}amd64-*", Path(tempfile.gettempdir()))
            # the state the report found: the chroot's proc, dev, dev/pts, sys and in_target.d mounted
            if found and any(p.name == "in_target.d" for p in runs.mounts_under(found[0])):
                run = found[0]
                break
            assert build.poll() is None, f"the build ended before its mounts: {log.read_text()[-3000:]}"
            assert time.monotonic() - started < MOUNTS_WAIT, "no chroot mounts in time"
            time.sleep(0.2)
    finally:
        os.killpg(build.pid, signal.SIGKILL)  # the build and every process of its group, at once
        build.wait()
    killed_after = time.monotonic() - started
    print(f"killed {killed_after:.1f} s after the start")

    # What the killed build left: the tmpfs and the chroot's mounts, the daemon, the work directory.
    mounts = runs.mounts_under(run)
    names = {p.name for p in mounts}
    assert {"proc", "dev", "pts", "sys", "in_target.d"} <= names, mounts
    proxy = owned_by(build.pid, "conf.*", cache_root() / "apt-cacher-ng")
    assert len(proxy) == 1, "no apt-cacher-ng of the killed build"
    port = proxy[0].name.removeprefix("conf.")
    daemon = aptcache._daemon(proxy[0].parent, port)
    assert daemon is not None
    work = owned_by(build.pid, "*/.build-amd64-*", artifacts)
    assert len(work) == 1

    done = subprocess.run(
        [sys.executable, "-m", "invoke", "clean", "--no-vms", "--artifacts", str(artifacts)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    said = done.stdout
    assert f"removed {run} ({len(mounts)} mounts)" in said, said
    assert f"removed {work[0]}" in said and f"apt-cacher-ng on port {port} (pid {daemon})" in said, said

    assert runs.mounts_under(run) == [] and not run.exists()
    assert not work[0].exists()
    assert runs.process_start(daemon) is None
    assert not any((proxy[0].parent / name).exists()
                   for name in (f"conf.{port}", f"acng.{port}.pid", f"acng.{port}.sock"))  # fmt: skip
    assert runs.users_of(run, f"{leftovers.RUN_ENV}={run}") == []  # no process of the run is left
    # the last build's log is kept: it says how far the build went
    assert (artifacts / DEFAULT_VERSION / "logs" / "build-amd64.log").stat().st_size > 0
