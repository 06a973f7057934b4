"""What a killed run leaves is found by our names and owner records and removed, and a live run's state is
never touched (systemvm/runs.py, systemvm/build/leftovers.py, aptcache.leftovers). Real processes killed
with SIGKILL, a real tmpfs, a real apt-cacher-ng; the whole killed build is tests/e2e/test_build_killed.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from systemvm import runs
from systemvm.build import aptcache, leftovers

REPO = Path(__file__).resolve().parents[2]


def owned_by_a_child(directory: Path) -> subprocess.Popen:
    """A live process of its own session recorded as the owner of ``directory``."""
    child = subprocess.Popen(["sleep", "600"], start_new_session=True)
    directory.mkdir(parents=True, exist_ok=True)
    runs.write_owner(directory, child.pid)
    return child


def kill9(child: subprocess.Popen) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.wait()


def test_owner_records_tell_a_live_owner_from_a_dead_one_and_a_reused_pid(tmp_path):
    child = owned_by_a_child(tmp_path / "d")
    record = runs.read_owner(tmp_path / "d")
    assert record is not None and runs.owner_alive(record) is True
    assert runs.owner_alive({**record, "start": record["start"] + 1}) is False  # the pid, reused later
    assert runs.owner_alive({**record, "host": "another-management-server"}) is None
    kill9(child)
    assert runs.owner_alive(record) is False


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_dead_runs_mounts_and_directory_go_a_live_runs_stay(tmp_path, monkeypatch):
    """A run directory holding a tmpfs with a bind mount inside: left while its owner lives, unmounted
    (deepest first) and removed once the owner was killed with SIGKILL."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("SYSTEMVM_CACHE", str(tmp_path / "cache"))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    run = tmp_path / f"{leftovers.RUN_PREFIX}amd64-test"
    child = owned_by_a_child(run)
    inner = run / "dib_build.x"
    inner.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(inner)], check=True)
    try:
        (inner / "mnt" / "proc").mkdir(parents=True)
        subprocess.run(["mount", "-t", "proc", "proc", str(inner / "mnt" / "proc")], check=True)
        runs.write_owner(inner)  # a record inside the tmpfs is no owner of the run: the run's own is
        assert leftovers.sweep(None) == []
        assert len(runs.mounts_under(run)) == 2, "a live run's mounts were touched"
        kill9(child)
        said = leftovers.sweep(None)
        assert f"{run} (2 mounts)" in said
        assert runs.mounts_under(run) == [] and not run.exists()
    finally:
        runs.unmount_all(run)
        child.kill()


def test_a_killed_builds_apt_cacher_ng_goes_with_its_files(tmp_path, monkeypatch):
    """A process running the build's package cache proxy is killed with SIGKILL: the daemon, its config,
    pid file and socket stay; the sweep removes them (and, as the build ends, a live proxy's socket too)."""
    monkeypatch.setenv("SYSTEMVM_CACHE", str(tmp_path / "cache"))
    script = textwrap.dedent(
        """
        import time
        from systemvm.build import aptcache
        with aptcache.apt_proxy() as url:
            print(url, flush=True)
            time.sleep(600)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "SYSTEMVM_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert child.stdout is not None
    port = child.stdout.readline().strip().rsplit(":", 1)[1]
    root = tmp_path / "cache" / "apt-cacher-ng"
    daemon = aptcache._daemon(root, port)
    assert daemon is not None
    assert aptcache.leftovers() == []  # its owner lives: untouched
    kill9(child)
    names = {p.name for p in root.iterdir()}
    assert {f"conf.{port}", f"acng.{port}.pid", f"acng.{port}.sock"} <= names, names
    said = aptcache.leftovers()
    assert len(said) == 1 and f"apt-cacher-ng on port {port} (pid {daemon})" in said[0]
    deadline = time.monotonic() + 10
    while runs.process_start(daemon) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert runs.process_start(daemon) is None
    assert {p.name for p in root.iterdir()} == {"cache", "log"}
    with aptcache.apt_proxy() as url:  # a run that ends normally leaves no socket either
        assert url
    assert {p.name for p in root.iterdir()} == {"cache", "log"}


def test_a_work_directory_of_a_killed_build_goes_a_live_ones_stays(tmp_path, monkeypatch):
    monkeypatch.setenv("SYSTEMVM_CACHE", str(tmp_path / "cache"))
    live, dead = tmp_path / "4.20.0" / ".build-amd64-live", tmp_path / "4.20.0" / ".build-i386-dead"
    keeper, victim = owned_by_a_child(live), owned_by_a_child(dead)
    (dead / "rootfs.raw").write_bytes(b"x")
    kill9(victim)
    try:
        assert [s for s in leftovers.sweep(tmp_path) if str(tmp_path) in s] == [str(dead)]
        assert live.is_dir() and not dead.exists()
    finally:
        keeper.kill()
