"""The test payload: the real agent against the real listener over TCP, and the image's patch step
(systemvm/guest/patch.py) applied to a temporary root."""

from __future__ import annotations

import hashlib
import io
import socket
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from systemvm import contract
from systemvm.boot import payload as testagent
from systemvm.boot.listener import ManagementListener
from systemvm.guest import patch as cloud_patch
from systemvm.guest.system import Guest


def test_payload_is_reproducible_and_complete(tmp_path):
    first = testagent.build_payload(tmp_path / "a")
    second = testagent.build_payload(tmp_path / "b")
    for name, path in first.files().items():
        assert path.read_bytes() == second.files()[name].read_bytes(), name
    with zipfile.ZipFile(first.agent_zip) as archive:
        assert sorted(archive.namelist()) == ["_run.sh", "agent.py", "conf/agent.properties"]
        assert (archive.getinfo("_run.sh").external_attr >> 16) & 0o111
    with tarfile.open(first.cloud_scripts) as archive:
        assert testagent.SCRIPTS_MARKER in archive.getnames()
    assert stat.S_IMODE(first.patch_script.stat().st_mode) & 0o111
    other = testagent.build_payload(tmp_path / "c", payload_id="another")
    assert other.cloud_scripts.read_bytes() != first.cloud_scripts.read_bytes()


def test_agent_reports_to_the_listener_and_logs_agent_started(tmp_path):
    with ManagementListener() as listener:
        agent_dir = tmp_path / "agent"
        with zipfile.ZipFile(testagent.build_payload(tmp_path / "p").agent_zip) as archive:
            archive.extractall(agent_dir)
        code = (
            "import sys, agent; "
            f"agent.run(agent.parse_settings(sys.argv[1:]), log_path={str(tmp_path / 'cloud.log')!r}, "
            "max_heartbeats=3)"
        )
        cmdline = f"type=consoleproxy name=v-9-VM host=127.0.0.1 port={listener.port} heartbeat=0.1"
        subprocess.run([sys.executable, "-c", code, *cmdline.split()], cwd=agent_dir, check=True, timeout=60)
        record = listener.wait_for("v-9-VM", heartbeats=3, timeout=10)
    assert record.role == "consoleproxy"
    assert record.startups[0]["kind"] == "startup" and record.startups[0]["name"] == "v-9-VM"
    assert "Agent started" in (tmp_path / "cloud.log").read_text()
    assert listener.garbage == []


def test_agent_tries_each_management_server_of_the_host_list(tmp_path):
    """host= is CloudStack's comma-separated list: a server that refuses is skipped for the next one."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.2", 0))  # bound, never listening: connections are refused
        with ManagementListener() as listener:
            agent_dir = tmp_path / "agent"
            with zipfile.ZipFile(testagent.build_payload(tmp_path / "p").agent_zip) as archive:
                archive.extractall(agent_dir)
            code = (
                "import sys, agent; "
                f"agent.run(agent.parse_settings(sys.argv[1:]), log_path={str(tmp_path / 'cloud.log')!r}, "
                "max_heartbeats=2)"
            )
            port = listener.port
            cmdline = f"type=secstorage name=s-9-VM host=127.0.0.2,127.0.0.1 port={port} heartbeat=0.1"
            subprocess.run(
                [sys.executable, "-c", code, *cmdline.split()], cwd=agent_dir, check=True, timeout=60
            )
            listener.wait_for("s-9-VM", heartbeats=2, timeout=10)
    log = (tmp_path / "cloud.log").read_text()
    assert "127.0.0.2" in log and "unreachable" in log and f"connected to 127.0.0.1:{port}" in log


def test_listener_times_out_naming_what_it_saw():
    with ManagementListener() as listener, pytest.raises(TimeoutError, match="nobody"):
        listener.wait_for_startup("s-1-VM", timeout=0.2)


class Runner:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> str:
        self.calls.append(argv)
        return ""


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def guest_root(tmp_path: Path, cmdline: str) -> tuple[Path, Guest, Runner, Clock]:
    root = tmp_path / "root"
    for d in ("var/cache/cloud", "var/log", "etc", "opt/cloud/lib"):
        (root / d).mkdir(parents=True)
    (root / "var/cache/cloud/cmdline").write_text(cmdline + "\n")
    (root / "opt/cloud/lib/VERSION").write_text("4.20.0\n")
    run, clock = Runner(), Clock()
    return (
        root,
        Guest(root, run, clock, clock.sleep, echo=False, program="cloud-patch"),
        run,
        clock,
    )


def deliver(payload: testagent.Payload, root: Path) -> None:
    for name, local in payload.files().items():
        (root / "var/cache/cloud" / name).write_bytes(local.read_bytes())


def test_patch_installs_agent_for_storage_and_marks_the_boot_done(tmp_path):
    root, guest, run, clock = guest_root(tmp_path, "type=secstorage name=s-1-VM host=169.254.0.1 port=8250")
    payload = testagent.build_payload(tmp_path / "payload")
    deliver(payload, root)
    assert cloud_patch.patch(guest, timeout=30)

    agent_dir = root / contract.AGENT_DIR.lstrip("/")
    assert (agent_dir / "_run.sh").stat().st_mode & 0o100
    properties = (agent_dir / "conf/agent.properties").read_text().splitlines()
    assert stat.S_IMODE((agent_dir / "conf/agent.properties").stat().st_mode) == 0o600  # secrets inside
    assert "heartbeat=5" in properties and "type=secstorage" in properties and "port=8250" in properties
    assert ["systemctl", "restart", "--no-block", "cloud.service"] in run.calls
    marker = (root / testagent.SCRIPTS_MARKER).read_text().strip()
    assert marker == payload.payload_id
    signature = (root / contract.SCRIPTS_SIGNATURE_PATH.lstrip("/")).read_text().strip()
    assert signature == hashlib.md5(payload.cloud_scripts.read_bytes()).hexdigest() == payload.signature()
    copy = root / contract.SCRIPTS_COPY_PATH.lstrip("/")
    assert copy.read_bytes() == payload.cloud_scripts.read_bytes()  # kept where CloudStack keeps it
    assert (root / testagent.KEYSTORE_SETUP).stat().st_mode & 0o100  # what patched.sh waits for
    assert (root / contract.BOOT_DONE_PATH.lstrip("/")).exists()
    assert (root / "etc/cloudstack-release").read_text().startswith("Cloudstack Release 4.20.0 ")
    assert (root / "var/cache/cloud/patch-sysvms.sh").stat().st_mode & 0o100


def test_patch_for_router_starts_no_agent_and_same_scripts_are_not_reapplied(tmp_path):
    root, guest, run, clock = guest_root(tmp_path, "type=router name=r-1-VM")
    payload = testagent.build_payload(tmp_path / "payload")
    deliver(payload, root)
    (root / contract.SCRIPTS_SIGNATURE_PATH.lstrip("/")).write_text(payload.signature() + "\n")
    assert cloud_patch.patch(guest, timeout=30)
    assert not (root / testagent.SCRIPTS_MARKER).exists()  # same signature: left alone
    assert not (root / contract.AGENT_DIR.lstrip("/")).exists()
    assert run.calls == []
    assert (root / contract.BOOT_DONE_PATH.lstrip("/")).exists()


def test_patch_wait_is_bounded(tmp_path):
    root, guest, run, clock = guest_root(tmp_path, "type=consoleproxy name=v-1-VM")
    (root / "var/cache/cloud/agent.zip").write_bytes(b"PK")  # only one of the three arrived
    assert not cloud_patch.patch(guest, timeout=120)
    assert 120 <= clock.now <= 122
    assert not (root / contract.BOOT_DONE_PATH.lstrip("/")).exists()
    assert "no patch arrived in time" in (root / "var/log/cloud.log").read_text()


def test_unsafe_scripts_archive_is_refused(tmp_path):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as archive:
        info = tarfile.TarInfo("../../etc/evil")
        archive.addfile(info, io.BytesIO(b""))
    with pytest.raises(ValueError, match="unsafe path"):
        cloud_patch.unpack_scripts(raw.getvalue(), tmp_path / "root")
    assert not (tmp_path / "etc").exists()
