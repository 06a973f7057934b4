"""The driver interface every hypervisor module implements (after Molecule's driver idea).

A driver boots one system VM from an exported artifact and gives back where SSH on 3922 answers.
Lifecycle: ``create()`` -> ``SshTarget``; ``console_log()`` at any time; ``destroy()`` always (also
after a failed or interrupted create). Every object a driver creates is named with ``run_prefix`` so
``cleanup_leftovers(prefix)`` can find and remove what a killed run left behind.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import secrets
from pathlib import Path

from systemvm.contract import BootArgs

RUN_PREFIX_BASE = "svmt"


def new_run_prefix() -> str:
    """A per-run name prefix such as ``svmt-3f9a1c``; every created object's name starts with it."""
    return f"{RUN_PREFIX_BASE}-{secrets.token_hex(3)}"


@dataclasses.dataclass
class SshTarget:
    host: str
    port: int
    user: str = "root"
    key_file: Path | None = None

    def testinfra_url(self) -> str:
        return f"paramiko://{self.user}@{self.host}:{self.port}?ssh_identity_file={self.key_file}"


@dataclasses.dataclass
class BootRequest:
    artifact: Path  # the exported artifact in this hypervisor's format (qcow2 / vhd / ova; bz2 allowed)
    flavour: str  # amd64 | i386
    boot_args: BootArgs
    run_prefix: str = dataclasses.field(default_factory=new_run_prefix)
    work_dir: Path = Path(os.environ.get("TMPDIR", "/tmp"))
    memory_mib: int = 1024
    cpus: int = 1
    ssh_timeout: float = 300.0
    ssh_key_file: Path | None = None  # the harness's private key: drivers wait for a real key login


class Driver(abc.ABC):
    """One hypervisor. Subclasses take their connection settings in ``__init__``."""

    name: str = "base"
    # seconds per step of the last create()/import_and_start() (e.g. "import", "start", "ssh"); every
    # driver sets it in __init__
    timings: dict[str, float]

    @abc.abstractmethod
    def create(self, request: BootRequest) -> SshTarget:
        """Import the artifact, create the VM with the role's NICs, deliver the command line, start it,
        and wait until SSH on 3922 answers. On failure raise with the console log attached."""

    @abc.abstractmethod
    def destroy(self) -> None:
        """Remove everything this driver created. Safe to call twice and after a partial create."""

    def restart(self, request: BootRequest) -> SshTarget:
        """Reboot the VM ``create`` made, deliver ``request``'s command line again and wait for SSH on 3922
        (a restart by the management server). Drivers that cannot raise NotImplementedError."""
        raise NotImplementedError(f"{self.name} cannot restart a VM")

    def import_and_start(self, request: BootRequest) -> SshTarget:
        """Everything up to a started VM, without waiting for SSH; return where SSH will answer. The API
        flow (an endpoint that runs no guest: vcsim, the XAPI stand-in) stops here. Default: ``create``."""
        return self.create(request)

    def console_log(self) -> str:
        return ""

    @classmethod
    def cleanup_leftovers(cls, prefix: str = RUN_PREFIX_BASE) -> list[str]:
        """Remove objects whose names start with ``prefix``; return their names."""
        return []

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()
