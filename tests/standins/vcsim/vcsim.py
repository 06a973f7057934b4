"""Build and run govmomi's vCenter simulator (vcsim) for the VMware tests.

The launcher (``main.go`` beside this file) is built in GOPATH mode from Debian's ``golang-go`` and
``golang-github-vmware-govmomi-dev`` (0.24.2, sources in /usr/share/gocode) into a cache directory, once per
launcher source and govmomi version. It serves ``simulator.VPX()`` (datacenter DC0, cluster DC0_C0, hosts,
datastore LocalDS_0, network "VM Network") over TLS on 127.0.0.1 at a port the kernel picks, accepting one
user name and password. vcsim accepts any uploaded bytes: it proves the API flow, not the disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
GOPATH_SYSTEM = Path("/usr/share/gocode")
GOVMOMI_SRC = GOPATH_SYSTEM / "src" / "github.com" / "vmware" / "govmomi"
PACKAGE = "svmt-vcsim"


class VcsimUnavailable(RuntimeError):
    """The launcher cannot be built here (Go or govmomi sources missing)."""


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "systemvm" / "vcsim"


def _govmomi_version() -> str:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "golang-github-vmware-govmomi-dev"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def build_launcher(cache: Path | None = None) -> Path:
    """Build the launcher once (GOPATH mode, no network) and return the binary's path."""
    if shutil.which("go") is None:
        raise VcsimUnavailable("missing host tool 'go': install it with 'apt-get install golang-go'")
    if not (GOVMOMI_SRC / "simulator").is_dir():
        raise VcsimUnavailable(
            "govmomi sources not found: install them with 'apt-get install golang-github-vmware-govmomi-dev'"
        )
    cache = Path(cache or cache_dir())
    source = (HERE / "main.go").read_bytes()
    key = hashlib.sha256(source + _govmomi_version().encode()).hexdigest()[:16]
    binary = cache / f"vcsim-launcher-{key}"
    if binary.is_file():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as work:
        gopath = Path(work) / "gopath"
        package_dir = gopath / "src" / PACKAGE
        package_dir.mkdir(parents=True)
        (package_dir / "main.go").write_bytes(source)
        env = {
            **os.environ,
            "GO111MODULE": "off",
            "GOPATH": f"{gopath}:{GOPATH_SYSTEM}",
            "GOCACHE": str(cache / "gocache"),
            "GOFLAGS": "",
            "GOPROXY": "off",
            "CGO_ENABLED": "0",
        }
        output = Path(work) / "vcsim-launcher"
        result = subprocess.run(
            ["go", "build", "-o", str(output), PACKAGE], env=env, cwd=work, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise VcsimUnavailable(f"building the vcsim launcher failed:\n{result.stderr}")
        os.replace(output, binary)
    return binary


@dataclasses.dataclass
class Vcsim:
    url: str  # https://127.0.0.1:PORT/sdk
    username: str
    password: str
    cert_file: Path
    process: subprocess.Popen
    work_dir: Path

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlparse(self.url).port or 443

    def settings(self, **overrides: str) -> dict[str, str]:
        """Connection settings for systemvm.boot.hypervisors.vmware, as load_settings('vmware')
        would return them."""
        values = {
            "url": self.url,
            "user": self.username,
            "password": self.password,
            "datacenter": "DC0",
            "cluster": "DC0_C0",
            "datastore": "LocalDS_0",
            "network": "VM Network",
            "verify_tls": "false",
        }
        values.update(overrides)
        return values

    def log(self) -> str:
        path = self.work_dir / "vcsim.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop the simulator (SIGTERM, then SIGKILL) and remove its work directory."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.work_dir, ignore_errors=True)


def start_vcsim(username: str = "svmt", password: str = "vcsim-secret", timeout: float = 30.0) -> Vcsim:
    """Build (if needed) and start vcsim on 127.0.0.1 at a free port; return once it serves."""
    binary = build_launcher()
    work = Path(tempfile.mkdtemp(prefix="svmt-vcsim-"))
    url_file, cert_file = work / "url", work / "cert.pem"
    log = open(work / "vcsim.log", "wb")  # noqa: SIM115 - the child keeps writing to it
    try:
        process = subprocess.Popen(
            [
                str(binary),
                "-listen",
                "127.0.0.1:0",
                "-username",
                username,
                "-password",
                password,
                "-url-file",
                str(url_file),
                "-cert-file",
                str(cert_file),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=work,
            env={**os.environ, "TMPDIR": str(work)},
        )
    finally:
        log.close()
    deadline = time.monotonic() + timeout
    while not url_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            text = (work / "vcsim.log").read_text(errors="replace")
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
            shutil.rmtree(work, ignore_errors=True)
            raise VcsimUnavailable(f"vcsim did not start within {timeout:.0f} s:\n{text}")
        time.sleep(0.05)
    url = url_file.read_text().strip()
    return Vcsim(url, username, password, cert_file, process, work)


@contextlib.contextmanager
def running_vcsim(**kwargs: object) -> Iterator[Vcsim]:
    server = start_vcsim(**kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()
