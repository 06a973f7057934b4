"""Patch a booted system VM as CloudStack's management server does: copy the payload over SSH, wait for boot.

The files go to /var/cache/cloud/ on port 3922 with paramiko (SFTP), each under a temporary name that is
renamed at the end, so the image never sees half a file; then we wait for /var/cache/cloud/boot_up_done.
The live patch of a running VM (4.16+) copies the files again and runs patch-sysvms.sh, reading the version
from its output as CloudStack's agent does (:func:`live_patch`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko

from systemvm import contract
from systemvm.boot.payload import Payload


@contextlib.contextmanager
def ssh_session(host: str, port: int, key_file: Path, timeout: float = 30.0) -> Iterator[paramiko.SSHClient]:
    client = paramiko.SSHClient()
    # Host keys are made at each VM's first boot, so there is nothing to pin them against.
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(
        host, port=port, username="root", key_filename=str(key_file), look_for_keys=False, allow_agent=False,
        timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
    )  # fmt: skip
    try:
        yield client
    finally:
        client.close()


def upload_payload(client: paramiko.SSHClient, payload: Payload, mode: int | None = None) -> None:
    """Each file to /var/cache/cloud/ under a temporary name, renamed at the end. ``mode``: every file's
    (CloudStack's live patch copies all three 0755), else 0755 for the script and 0644 for the archives."""
    with client.open_sftp() as sftp:
        for name, local in payload.files().items():
            final = f"{contract.CACHE_DIR}/{name}"
            partial = f"{contract.CACHE_DIR}/.{name}.part"
            sftp.put(str(local), partial)
            sftp.chmod(partial, mode if mode is not None else 0o755 if name.endswith(".sh") else 0o644)
            sftp.posix_rename(partial, final)


def wait_for_boot_done(client: paramiko.SSHClient, timeout: float = 300.0) -> float:
    """Seconds until /var/cache/cloud/boot_up_done exists; TimeoutError (with the VM's cloud.log) if never."""
    start = time.monotonic()
    with client.open_sftp() as sftp:
        while time.monotonic() - start < timeout:
            try:
                sftp.stat(contract.BOOT_DONE_PATH)
                return time.monotonic() - start
            except FileNotFoundError:
                time.sleep(1.0)
        try:
            with sftp.open(contract.CLOUD_LOG) as f:
                log = f.read().decode(errors="replace")[-3000:]
        except OSError:
            log = "(no cloud.log)"
    raise TimeoutError(f"{contract.BOOT_DONE_PATH} did not appear within {timeout:.0f}s; cloud.log:\n{log}")


def deliver_patch(host: str, port: int, key_file: Path, payload: Payload, timeout: float = 300.0) -> float:
    """Copy the payload, wait for the VM to finish its boot. Returns seconds from upload to boot_up_done."""
    with ssh_session(host, port, key_file) as client:
        upload_payload(client, payload)
        return wait_for_boot_done(client, timeout)


# ------------------------------------------------------------------------------ the live patch (4.16+)


@dataclasses.dataclass(frozen=True)
class LivePatch:
    """What the management server sees of a live patch: the script's exit status and merged output, the
    version it reads from that output, and the MD5 it expected (the payload's cloud-scripts.tgz)."""

    exit_status: int
    output: str
    version: str
    expected: str
    payload_id: str
    seconds: float

    def as_params(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def patch_version(output: str) -> str:
    """The version in patch-sysvms.sh's output, read as CloudStack's KVM agent reads it: newlines become
    spaces, the text splits on ':', and only with exactly two parts is the version the second part up to
    its first space. Any other output gives ""."""
    parts = output.replace("\n", " ").split(":")
    if len(parts) != 2:
        return ""
    return parts[1].lstrip().split(" ", 1)[0]


def template_version(line: str) -> tuple[str, str] | None:
    """(release version, scripts signature) from get_template_version.sh's line, read as the management
    server reads it: exactly two parts around '&', the version the third word of the release line and of
    the form x.y.z[.a][-brand][-epoch][-SNAPSHOT]. None when it would not parse."""
    parts = line.strip().split("&")
    if len(parts) != 2:
        return None
    words = parts[0].split()
    if len(words) < 3 or not RELEASE_VERSION.fullmatch(words[2]):
        return None
    return words[2], parts[1].strip()


RELEASE_VERSION = re.compile(r"\d+\.\d+\.\d+(\.\d+)?(-[A-Za-z][\w.]*)?(-\d+)?(-SNAPSHOT)?")


def run_command(client: paramiko.SSHClient, command: str, timeout: float) -> tuple[int, str]:
    """Exit status and output (stderr merged into stdout, as CloudStack's SSH client reads it)."""
    transport = client.get_transport()
    assert transport is not None, "the SSH session is closed"
    channel = transport.open_session(timeout=timeout)
    channel.settimeout(timeout)
    channel.set_combine_stderr(True)  # before the command starts, so no byte of stderr goes elsewhere
    channel.exec_command(command)
    chunks = []
    while chunk := channel.recv(65536):
        chunks.append(chunk)
    status = channel.recv_exit_status()
    channel.close()
    return status, b"".join(chunks).decode(errors="replace")


def live_patch(host: str, port: int, key_file: Path, payload: Payload, timeout: float = 600.0) -> LivePatch:
    """Patch a running VM as CloudStack's management server does: copy the three files to
    /var/cache/cloud/ (mode 0755), run patch-sysvms.sh (at most ``timeout`` s), read its version."""
    started = time.monotonic()
    with ssh_session(host, port, key_file) as client:
        upload_payload(client, payload, mode=0o755)
        status, output = run_command(client, contract.LIVE_PATCH_SCRIPT, timeout)
    return LivePatch(
        exit_status=status,
        output=output[-2000:],
        version=patch_version(output),
        expected=payload.signature(),
        payload_id=payload.payload_id,
        seconds=round(time.monotonic() - started, 1),
    )
