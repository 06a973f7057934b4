"""Patch a booted system VM as CloudStack's management server does, and ask its version.

After a boot, and again to live-patch a running VM, the server copies agent.zip, cloud-scripts.tgz and
patch-sysvms.sh to /var/cache/cloud/ on port 3922 and runs the script at once, reading the version from its
merged output as CloudStack's agent does (:func:`run_patch`); the version handshake runs
get_template_version.sh and splits its line on '&' as the server does (:func:`handshake`).
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


def upload_payload(client: paramiko.SSHClient, payload: Payload) -> None:
    """Each file to /var/cache/cloud/ (mode 0755, as CloudStack's copy leaves all three), under a temporary
    name renamed at the end, so nothing ever sees half a file."""
    with client.open_sftp() as sftp:
        for name, local in payload.files().items():
            final = f"{contract.CACHE_DIR}/{name}"
            partial = f"{contract.CACHE_DIR}/.{name}.part"
            sftp.put(str(local), partial)
            sftp.chmod(partial, 0o755)
            sftp.posix_rename(partial, final)


# ------------------------------------------------------------------------------ the patch and the handshake


@dataclasses.dataclass(frozen=True)
class PatchRun:
    """What the management server sees of a patch: the script's exit status and merged output, the
    version it reads from that output, and the digest it expected (the payload's cloud-scripts.tgz)."""

    exit_status: int
    output: str
    version: str
    expected: str
    payload_id: str
    seconds: float
    digest: str = "md5"

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


def java_split(text: str, separator: str) -> list[str]:
    """``String.split`` as CloudStack's Java code splits: trailing empty parts are dropped ("a&" is one
    part)."""
    parts = text.split(separator)
    while parts and parts[-1] == "":
        parts.pop()
    return parts


def template_version(line: str) -> tuple[str, str] | None:
    """(release version, scripts signature) from get_template_version.sh's line, read as the management
    server reads it: exactly two parts around '&' (a missing signature leaves one), the version the third
    word of the release line and of the form x.y.z[.a][-brand][-epoch][-SNAPSHOT]. None when it would not
    parse."""
    parts = java_split(line.strip(), "&")
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


def run_patch(host: str, port: int, key_file: Path, payload: Payload, timeout: float = 600.0) -> PatchRun:
    """Patch a VM as CloudStack's management server does: copy the three files to /var/cache/cloud/ and
    run patch-sysvms.sh right away (at most ``timeout`` s), reading its version."""
    started = time.monotonic()
    with ssh_session(host, port, key_file) as client:
        upload_payload(client, payload)
        status, output = run_command(client, contract.LIVE_PATCH_SCRIPT, timeout)
    return PatchRun(
        exit_status=status,
        output=output[-2000:],
        version=patch_version(output),
        expected=payload.signature(),
        payload_id=payload.payload_id,
        seconds=round(time.monotonic() - started, 1),
        digest=payload.digest,
    )


@dataclasses.dataclass(frozen=True)
class Handshake:
    """get_template_version.sh's line as the management server reads it (``parsed`` None: it would not
    parse) and how long it took (it waits for boot_up_done)."""

    line: str
    parsed: tuple[str, str] | None
    seconds: float

    def as_params(self) -> dict[str, object]:
        return dataclasses.asdict(self)


HANDSHAKE_WAIT = 300.0  # the script waits up to 240 s for boot_up_done


def handshake(host: str, port: int, key_file: Path, timeout: float = HANDSHAKE_WAIT) -> Handshake:
    """Run the version handshake as the management server does (GetDomRVersionCmd over SSH)."""
    started = time.monotonic()
    with ssh_session(host, port, key_file) as client:
        _, output = run_command(client, contract.TEMPLATE_VERSION_SCRIPT, timeout)
    line = output.strip()
    return Handshake(line=line, parsed=template_version(line), seconds=round(time.monotonic() - started, 1))
