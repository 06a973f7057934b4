"""Wait until SSH on 3922 answers with our key: the one readiness signal every driver shares."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import paramiko

from systemvm.hosttools import require_tools


def banner_missing(host: str, port: int) -> str | None:
    """None when ``host:port`` greets with an SSH banner, else why not (one line). A bare connect proves
    nothing: slirp and NAT accept any TCP connection on a forwarded port."""
    try:
        with socket.create_connection((host, port), timeout=5) as probe:
            probe.settimeout(5)
            if probe.recv(4).startswith(b"SSH-"):
                return None
            return "an answer that is not an SSH banner"
    except OSError as exc:
        return str(exc) or type(exc).__name__


def try_ssh(host: str, port: int, key_file: Path, user: str = "root", command: str = "true") -> str | None:
    """Run ``command`` over SSH; return its stdout, or None when SSH does not answer (yet)."""
    if banner_missing(host, port) is not None:
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


def wait_for_banner(host: str, port: int, timeout: float, alive: Callable[[], bool] | None = None) -> float:
    """Without a private key: poll until ``host:port`` greets with an SSH banner; return the seconds it took.

    ``alive()`` returning False ends the wait early. Raises TimeoutError with the last reason.
    """
    start = time.monotonic()
    last = "no answer"
    while time.monotonic() - start < timeout:
        if alive is not None and not alive():
            raise TimeoutError("the VM stopped before SSH on 3922 answered")
        reason = banner_missing(host, port)
        if reason is None:
            return time.monotonic() - start
        last = reason
        time.sleep(2)
    raise TimeoutError(f"SSH on {host}:{port} did not answer within {timeout:.0f} s (last: {last})")


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
