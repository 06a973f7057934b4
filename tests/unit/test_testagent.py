"""The test payload: the real agent against the real listener over TCP, and its patch-sysvms.sh run for real
on a temporary root (with stand-ins for systemctl and iptables)."""

from __future__ import annotations

import hashlib
import shutil
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
from systemvm.boot.patch import patch_version


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


PATCH_TOOLS = ("bash", "tar", "gzip", "zip", "unzip", "md5sum", "sha512sum", "awk", "find", "tr", "sed")


def patch_root(tmp_path: Path, cmdline: str, signature: bool = True) -> Path:
    """A directory laid out as a system VM before the management server's patch: the command line, the
    role's service list, a scripts signature (unless ``signature`` is False), nothing of the agent."""
    root = tmp_path / "root"
    for d in ("var/cache/cloud", "var/log", "etc", "opt/cloud/bin", "root", "usr/local/cloud"):
        (root / d).mkdir(parents=True)
    (root / "var/cache/cloud/cmdline").write_text(cmdline + "\n")
    role = contract.parse_cmdline(cmdline)["type"]
    (root / "var/cache/cloud/enabled_svcs").write_text("\n".join(contract.service_lists(role)[0]) + "\n")
    if signature:
        (root / contract.SCRIPTS_SIGNATURE_PATH.lstrip("/")).write_text("0" * 32 + "\n")
    return root


def stand_ins(tmp_path: Path, active: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """systemctl and iptables that log their arguments (``is-active`` answers yes for ``active``)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    is_active = " ".join(active)
    (bin_dir / "systemctl").write_text(
        f'#!/bin/sh\necho systemctl "$@" >> {calls}\n'
        f'[ "$1" = is-active ] || exit 0\nfor s in {is_active}; do [ "$3" = "$s" ] && exit 0; done\nexit 3\n'
    )
    (bin_dir / "iptables").write_text(f'#!/bin/sh\necho iptables "$@" >> {calls}\n[ "$1" != -C ]\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return bin_dir, calls


def run_patch(payload: testagent.Payload, root: Path, bin_dir: Path) -> subprocess.CompletedProcess[str]:
    """Copy the three files as the management server does, run patch-sysvms.sh, merged streams."""
    for name, local in payload.files().items():
        target = root / "var/cache/cloud" / name
        target.write_bytes(local.read_bytes())
        target.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SVMT_PATCH_ROOT": str(root)}
    return subprocess.run(["bash", str(root / "var/cache/cloud/patch-sysvms.sh")], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)  # fmt: skip


needs_patch_tools = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in PATCH_TOOLS), reason=f"needs {', '.join(PATCH_TOOLS)}"
)


@needs_patch_tools
@pytest.mark.parametrize("digest", testagent.DIGESTS)
def test_patch_installs_the_agent_and_answers_exactly_the_version(tmp_path, digest):
    """A storage VM's patch: the agent unpacked (scripts executable), the scripts over /, the signature in
    the line's digest, the delivery removed, and the merged output parses to exactly version:<digest>."""
    root = patch_root(tmp_path, "type=secstorage name=s-1-VM host=169.254.0.1 port=8250")
    bin_dir, calls = stand_ins(tmp_path, active=("apache2",))
    payload = testagent.build_payload(tmp_path / "payload", digest=digest)
    done = run_patch(payload, root, bin_dir)
    assert done.returncode == 0, done.stdout
    assert done.stdout == f"version:{payload.signature()} \n"
    assert (
        patch_version(done.stdout)
        == payload.signature()
        == hashlib.new(digest, payload.cloud_scripts.read_bytes()).hexdigest()
    )
    agent_dir = root / contract.AGENT_DIR.lstrip("/")
    assert (agent_dir / "_run.sh").stat().st_mode & 0o100
    assert (root / testagent.SCRIPTS_MARKER).read_text().strip() == payload.payload_id
    assert (root / contract.SCRIPTS_SIGNATURE_PATH.lstrip("/")).read_text().strip() == payload.signature()
    kept = root / contract.SCRIPTS_COPY_PATH.lstrip("/")
    assert kept.read_bytes() == payload.cloud_scripts.read_bytes()
    assert not [n for n in contract.PATCH_FILES if (root / "var/cache/cloud" / n).exists()]
    assert "systemctl restart apache2" in calls.read_text()  # active: restarted; cloud is not: left alone
    assert "systemctl restart cloud" not in calls.read_text()


@needs_patch_tools
def test_patch_of_an_image_without_a_signature_does_not_parse(tmp_path):
    """Like CloudStack's, the script backs up the signature without hiding the error: an image without one
    makes the management server's version parse fail (the merged output has more than one ':')."""
    root = patch_root(tmp_path, "type=router name=r-1-VM", signature=False)
    bin_dir, _ = stand_ins(tmp_path)
    payload = testagent.build_payload(tmp_path / "payload")
    done = run_patch(payload, root, bin_dir)
    assert "cannot stat" in done.stdout
    assert patch_version(done.stdout) == ""


@needs_patch_tools
def test_router_patch_unpacks_no_agent_and_restarts_only_running_services(tmp_path):
    root = patch_root(tmp_path, "type=router name=r-1-VM")
    (root / contract.AGENT_DIR.lstrip("/")).mkdir()  # the image's empty agent directory: nothing to back up
    bin_dir, calls = stand_ins(tmp_path, active=("dnsmasq",))
    payload = testagent.build_payload(tmp_path / "payload")
    done = run_patch(payload, root, bin_dir)
    assert done.returncode == 0, done.stdout
    assert done.stdout == f"version:{payload.signature()} \n"  # exactly: nothing else in the merged output
    assert not (root / contract.AGENT_DIR.lstrip("/") / "_run.sh").exists()
    restarts = [line for line in calls.read_text().splitlines() if line.startswith("systemctl restart")]
    assert restarts == ["systemctl restart dnsmasq"]


def test_patch_script_names_the_lines_digest(tmp_path):
    for digest in testagent.DIGESTS:
        assert f"DIGEST={digest}\n".encode() in testagent.patch_script_bytes(digest)
    with pytest.raises(ValueError, match="unknown digest"):
        testagent.patch_script_bytes("sha1")
