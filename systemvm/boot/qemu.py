"""Boot a disk under plain QEMU (no libvirt), deliver the command line through qemu-guest-agent, reach SSH.

Used by the build's boot test and the benchmark; the hypervisor drivers in ``hypervisors/`` do the same
through each hypervisor's own API. The artifact is never modified: QEMU runs on a qcow2 overlay.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from systemvm import contract
from systemvm.boot import qga, sshwait, testnet
from systemvm.boot.hypervisors.accel import domain_type
from systemvm.export import detect
from systemvm.hosttools import require_tools


def qemu_accel() -> str:
    """``kvm`` only where hardware virtualisation really works, else TCG (override: SYSTEMVM_DOMAIN_TYPE)."""
    return "kvm" if domain_type() == "kvm" else "tcg"


def disk_format(path: Path) -> str:
    return "qcow2" if detect.kind_of(path) == "qcow2" else "raw"


class QemuVM:
    """``with QemuVM(disk, role=..., authorized_key=...) as vm: vm.wait_ssh(key)``."""

    def __init__(
        self,
        disk: Path,
        *,
        role: str,
        authorized_key: str,
        name: str = "s-1-VM",
        mgmt_port: int = contract.AGENT_PORT,
        work_dir: Path | None = None,
        memory_mib: int = 1024,
        extra: dict[str, str] | None = None,
        lab_nics: testnet.LabNics | None = None,
    ) -> None:
        """``lab_nics`` (routers): the guest and public NICs on lab taps (``-netdev tap``); plug them with
        ``NetLab.plug`` right after :meth:`start`."""
        require_tools("qemu-system-x86_64", "qemu-img")
        self.disk = Path(disk).resolve()
        self.role = role
        self.name = name
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="svmt-qemu-"))
        self.net = testnet.plan_test_network(role, name, lab=lab_nics)
        args = testnet.boot_args(self.net, name, authorized_key, mgmt_port)
        args.extra.update(extra or {})
        self.cmdline = args.to_cmdline()
        self.memory_mib = memory_mib
        self.console_path = self.work_dir / "console.log"
        self.qga_path = self.work_dir / "qga.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.timings: dict[str, float] = {}

    @property
    def ssh_port(self) -> int:
        return self.net.ssh_host_port

    def command(self) -> list[str]:
        overlay = self.work_dir / "overlay.qcow2"
        return [
            "qemu-system-x86_64",
            "-accel", qemu_accel(),
            "-m", str(self.memory_mib),
            "-smp", "1",
            "-name", self.name,
            "-display", "none",
            "-no-user-config",
            "-nodefaults",
            "-serial", f"file:{self.console_path}",
            "-drive", f"file={overlay},if=virtio,format=qcow2,cache=unsafe",
            "-chardev", f"socket,id=qga0,path={self.qga_path},server=on,wait=off",
            "-device", "virtio-serial-pci",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            *testnet.qemu_netdev_args(self.net),
        ]  # fmt: skip

    def start(self) -> None:
        overlay = self.work_dir / "overlay.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", disk_format(self.disk), "-b", str(self.disk),
             str(overlay)],
            check=True,
        )  # fmt: skip
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.work_dir / "qemu.err", "wb"), start_new_session=True,
        )  # fmt: skip

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def deliver_cmdline(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.qga_path.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        qga.deliver_cmdline(self.qga_path, self.cmdline, deadline)
        self.timings["cmdline_delivered"] = time.monotonic() - self.started_at

    def wait_ssh(self, key_file: Path, timeout: float = 300.0) -> float:
        try:
            sshwait.wait_for_ssh("127.0.0.1", self.ssh_port, key_file, timeout, alive=self.alive)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- console log (tail) ---\n{self.console_tail()}") from None
        self.timings["ssh"] = time.monotonic() - self.started_at
        return self.timings["ssh"]

    def console_log(self) -> str:
        try:
            return self.console_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def console_tail(self, lines: int = 40) -> str:
        return "\n".join(self.console_log().splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        (self.work_dir / "overlay.qcow2").unlink(missing_ok=True)
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> QemuVM:
        self.start()
        try:
            self.deliver_cmdline()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
