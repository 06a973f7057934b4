"""Where the boot command line comes from: one channel per hypervisor, and the choice among them.

The readers take paths and a command runner (``run(argv)`` returns stdout and raises OSError or
subprocess.CalledProcessError), so tests can feed recorded outputs; :func:`obtain_cmdline` picks the
channel of the hypervisor it detects. What the host writes (keys, the xenstore key, the KVM file) is
:mod:`systemvm.contract`'s; how the guest reads it is here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from systemvm import contract
from systemvm.guest.system import Guest, Runner

# Hyper-V: the pool the host writes key/value pairs into (hv_kvp_daemon keeps it), fixed-size records.
HYPERV_KVP_POOL = "/var/lib/hyperv/.kvp_pool_0"
KVP_KEY_SIZE = 512
KVP_VALUE_SIZE = 2048
DMI_DIR = "/sys/class/dmi/id"


def parse_virt_what(output: str) -> str | None:
    """Map ``virt-what`` facts to a channel name: kvm, xen-hvm, xen-pv, vmware, hyperv (None: unknown)."""
    facts = output.split()
    if "xen" in facts:
        if "xen-hvm" in facts:
            return "xen-hvm"
        return "xen-pv" if "xen-domU" in facts else None
    for fact, channel in (("vmware", "vmware"), ("hyperv", "hyperv"), ("kvm", "kvm"), ("qemu", "kvm")):
        if fact in facts:
            return channel
    return None


def hypervisor_from_dmi(dmi_dir: str = DMI_DIR, proc_xen: str = "/proc/xen") -> str | None:
    """The hypervisor from DMI strings when they name one (None when they do not)."""
    strings = []
    for name in ("sys_vendor", "product_name", "bios_vendor"):
        try:
            with open(os.path.join(dmi_dir, name), encoding="utf-8", errors="replace") as f:
                strings.append(f.read().strip())
        except OSError:
            pass
    text = " ".join(strings)
    if "QEMU" in text or "KVM" in text:
        return "kvm"
    if "Xen" in text:
        return "xen-hvm"
    if "VMware" in text:
        return "vmware"
    if "Microsoft Corporation" in text and "Virtual Machine" in text:
        return "hyperv"
    if not strings and os.path.isdir(proc_xen):
        return "xen-pv"  # PV guests have no DMI tables
    return None


CHANNEL_HYPERVISOR = {
    "kvm": "kvm",
    "xen-hvm": "xenserver",
    "xen-pv": "xenserver",
    "vmware": "vmware",
    "hyperv": "hyperv",
}


def detect_hypervisor(run: Runner, dmi_dir: str = DMI_DIR, proc_xen: str = "/proc/xen") -> str | None:
    """DMI first (three file reads), virt-what when DMI does not say (e.g. a host that sets its own SMBIOS).

    virt-what is a shell script of many small processes: 2 s on an idle emulated CPU and up to 20 s in
    the middle of a boot, where it delayed everything after the command line arrived.
    """
    found = hypervisor_from_dmi(dmi_dir, proc_xen)
    if found:
        return found
    try:
        return parse_virt_what(run(["virt-what"]))
    except Exception:  # noqa: BLE001 - any failure of the tool: nothing more to learn
        return None


def read_xenstore_cmdline(run: Runner) -> str:
    return run(["xenstore-read", contract.XENSTORE_KEY]).strip().replace("%", " ")


def read_proc_cmdline(path: str = "/proc/cmdline") -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read().strip()


def read_vmware_cmdline(run: Runner) -> str:
    return run(["vmtoolsd", "--cmd", "machine.id.get"]).strip()


def parse_kvp_pool(data: bytes) -> dict[str, str]:
    """Records of a NUL-padded 512-byte key and 2048-byte value, as hv_kvp_daemon stores them."""
    size = KVP_KEY_SIZE + KVP_VALUE_SIZE
    pairs: dict[str, str] = {}
    for offset in range(0, len(data) - size + 1, size):
        key = data[offset : offset + KVP_KEY_SIZE].split(b"\0", 1)[0].decode("utf-8", "replace")
        value = data[offset + KVP_KEY_SIZE : offset + size].split(b"\0", 1)[0].decode("utf-8", "replace")
        if key:
            pairs[key] = value
    return pairs


def read_hyperv_cmdline(pool_path: str = HYPERV_KVP_POOL) -> str:
    """The ``cmdline`` item of the host's KVP pool, else the first value that looks like one."""
    with open(pool_path, "rb") as f:
        pairs = parse_kvp_pool(f.read())
    if "cmdline" in pairs:
        return pairs["cmdline"].strip()
    for value in pairs.values():
        if "type=" in value:
            return value.strip()
    raise ValueError(f"no command line among the keys of {pool_path}: {', '.join(pairs) or 'empty pool'}")


def wait_for_cmdline_file(
    path: str = contract.CMDLINE_PATH,
    timeout: float = contract.KVM_CMDLINE_WAIT,
    not_before: float = 0.0,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> str | None:
    """KVM: wait for the host to write ``path`` (newer than ``not_before``, i.e. this boot) and return it.

    The host writes through qemu-guest-agent in one or more chunks, so the content must be non-empty and
    the same on two reads in a row. None when nothing arrived in time.
    """
    clock = clock or time.monotonic
    sleep = sleep or time.sleep
    deadline = clock() + timeout
    previous = None
    while True:
        try:
            if os.stat(path).st_mtime >= not_before:
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read().strip()
                if text and text == previous:
                    return text
                previous = text
        except OSError:
            previous = None
        if clock() >= deadline:
            return None
        sleep(0.5)


def boot_time(guest: Guest) -> float:
    """Wall-clock time this boot started (btime in /proc/stat); 0 when unknown."""
    try:
        for line in guest.path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def obtain_cmdline(guest: Guest) -> tuple[str, str, str]:
    """(command line, where it came from, hypervisor) -- /mnt/cmdline first, then the hypervisor's channel."""
    hypervisor = detect_hypervisor(guest.run, str(guest.path(DMI_DIR)), str(guest.path("/proc/xen")))
    hypervisor_name = CHANNEL_HYPERVISOR.get(hypervisor or "", "kvm")
    override = guest.path(contract.OVERRIDE_PATH)
    if override.is_file():
        return override.read_text(errors="replace").strip(), contract.OVERRIDE_PATH, hypervisor_name
    guest.log(f"hypervisor channel: {hypervisor or 'unknown (trying KVM, then /proc/cmdline)'}")
    try:
        if hypervisor == "xen-hvm":
            return read_xenstore_cmdline(guest.run), "xenstore", hypervisor_name
        if hypervisor == "xen-pv":
            return (
                read_proc_cmdline(str(guest.path("/proc/cmdline"))),
                "/proc/cmdline",
                hypervisor_name,
            )
        if hypervisor == "vmware":
            return read_vmware_cmdline(guest.run), "vmtoolsd", hypervisor_name
        if hypervisor == "hyperv":
            return read_hyperv_when_ready(guest), "kvp", hypervisor_name
    except Exception as exc:  # noqa: BLE001 - a broken channel must not stop the boot
        guest.log(f"reading the command line from {hypervisor} failed: {exc}")
    # KVM (and unknown): the host writes the file through qemu-guest-agent, which udev starts.
    cached = guest.path(contract.CMDLINE_PATH)
    text = wait_for_cmdline_file(
        str(cached), contract.KVM_CMDLINE_WAIT, boot_time(guest), guest.clock, guest.sleep
    )
    if text:
        return text, "qemu-guest-agent", hypervisor_name
    if cached.is_file() and cached.read_text().strip():
        guest.log("no command line from the host this boot; using the one from the previous boot")
        return cached.read_text(errors="replace").strip(), "previous boot", hypervisor_name
    return read_proc_cmdline(str(guest.path("/proc/cmdline"))), "/proc/cmdline", hypervisor_name


def read_hyperv_when_ready(guest: Guest) -> str:
    """hv_kvp_daemon fills the pool from the host after it starts (normally after this unit): start it
    now and wait, with the KVM bound, for the command line to show up in the pool."""
    try:
        guest.run(["systemctl", "start", "--no-block", "hv-kvp-daemon.service"])
    except Exception as exc:  # noqa: BLE001 - the pool may be filled already
        guest.log(f"starting hv-kvp-daemon failed: {exc}")
    pool = str(guest.path(HYPERV_KVP_POOL))
    deadline = guest.clock() + contract.KVM_CMDLINE_WAIT
    while True:
        try:
            return read_hyperv_cmdline(pool)
        except (OSError, ValueError):
            if guest.clock() >= deadline:
                raise
            guest.sleep(1.0)
