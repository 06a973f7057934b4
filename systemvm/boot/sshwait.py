"""Wait until SSH on 3922 answers with our key: the one readiness signal every driver shares."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import paramiko

from systemvm.hosttools import require_tools


def try_ssh(host: str, port: int, key_file: Path, user: str = "root", command: str = "true") -> str | None:
    """Run ``command`` over SSH; return its stdout, or None when SSH does not answer (yet)."""
    try:
        with socket.create_connection((host, port), timeout=5) as probe:
            probe.settimeout(5)
            if not probe.recv(4).startswith(b"SSH-"):
                return None
    except OSError:
        return None
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(
            host,
            port=port,
            username=user,
            key_filename=str(key_file),
            timeout=10,
            banner_timeout=10,
            auth_timeout=10,
            allow_agent=False,
            look_for_keys=False,
        )
        _, stdout, _ = client.exec_command(command, timeout=30)
        output = stdout.read().decode(errors="replace")
        if stdout.channel.recv_exit_status() != 0:
            return None
        return output
    except (paramiko.SSHException, OSError, EOFError):
        return None
    finally:
        client.close()


def wait_for_ssh(
    host: str,
    port: int,
    key_file: Path,
    timeout: float,
    alive: Callable[[], bool] | None = None,
    user: str = "root",
) -> float:
    """Poll until a key login on ``host:port`` runs a command; return the seconds it took.

    ``alive()`` returning False (the VM died) ends the wait early. Raises TimeoutError with the reason.
    """
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if alive is not None and not alive():
            raise TimeoutError("the VM stopped before SSH on 3922 answered")
        if try_ssh(host, port, key_file, user) is not None:
            return time.monotonic() - start
        time.sleep(2)
    raise TimeoutError(f"SSH on {host}:{port} did not answer within {timeout:.0f} s")


def make_keypair(directory: Path, name: str = "id_ed25519") -> tuple[Path, str]:
    """A fresh ed25519 key pair for one run (ssh-keygen); returns (private key path, public key line)."""
    require_tools("ssh-keygen")
    directory.mkdir(parents=True, exist_ok=True)
    private = directory / name
    private.unlink(missing_ok=True)
    (directory / f"{name}.pub").unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "systemvm-harness", "-f", str(private)],
        check=True,
    )
    return private, (directory / f"{name}.pub").read_text().strip()
