"""The system being configured: a root directory, a command runner, a log (:class:`Guest`).

Paths are resolved under ``Guest.root`` and commands go through ``Guest.run`` so the unit tests can run
every guest program on a temporary directory with recorded command outputs.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from systemvm import contract

# A command runner: argv -> stdout; raises OSError or subprocess.CalledProcessError on failure.
Runner = Callable[[list[str]], str]


# A runner that also writes text to the command's stdin (for secrets, which never go in an argument).
Feeder = Callable[[list[str], str], str]


PROGRAM_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")


def _run_command(argv: list[str]) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120).stdout


def _feed_command(argv: list[str], stdin: str) -> str:
    return subprocess.run(argv, input=stdin, check=True, capture_output=True, text=True, timeout=120).stdout


class Guest:
    """The system being configured: a root directory, a command runner, a log."""

    def __init__(
        self,
        root: str | os.PathLike[str] = "/",
        run: Runner = _run_command,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        echo: bool = True,
        program: str = "cloud-early-config",
        feed: Feeder = _feed_command,
    ) -> None:
        self.program = program
        self.root = Path(root)
        self.run = run
        self.feed = feed
        self.clock = clock
        self.sleep = sleep
        self.echo = echo
        self.late = False  # True when configuring from a command line the host wrote after the boot

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def log(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {self.program}: {message}"
        if self.echo:
            print(message, flush=True)
        try:
            with open(self.path(contract.CLOUD_LOG), "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError:
            pass

    def has_program(self, name: str) -> bool:
        """Whether ``name`` is installed in one of the system's program directories (under ``root``)."""
        return any(self.path(f"{d}/{name}").is_file() for d in PROGRAM_DIRS)

    def write(self, absolute: str, text: str, mode: int = 0o644) -> None:
        """Write beside the target and rename: a power cut never leaves half a file."""
        target = self.path(absolute)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()  # e.g. a resolv.conf link into a resolver we do not run
        tmp = target.with_name(f".{target.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
