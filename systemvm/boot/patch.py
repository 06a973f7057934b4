"""Patch a booted system VM as CloudStack's management server does: copy the payload over SSH, wait for boot.

The files go to /var/cache/cloud/ on port 3922 with paramiko (SFTP), each under a temporary name that is
renamed at the end, so the image never sees half a file; then we wait for /var/cache/cloud/boot_up_done.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko

from systemvm import contract
from systemvm.testagent import Payload


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
    with client.open_sftp() as sftp:
        for name, local in payload.files().items():
            final = f"{contract.CACHE_DIR}/{name}"
            partial = f"{contract.CACHE_DIR}/.{name}.part"
            sftp.put(str(local), partial)
            sftp.chmod(partial, 0o755 if name.endswith(".sh") else 0o644)
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
