"""The libvirt domain type for a system VM: ``kvm`` where hardware virtualisation works, else ``qemu``.

``kvm`` needs all three of: ``/dev/kvm`` that this process can open, a CPU that shows ``vmx`` (Intel) or
``svm`` (AMD) in ``/proc/cpuinfo``, and a KVM vendor module that runs unmodified guest kernels
(``kvm_intel`` or ``kvm_amd``). Some sandboxes offer a ``/dev/kvm`` backed by ``kvm_pvm`` (pagetable-based
virtual machines), which only runs guest kernels built for it; a stock Debian kernel hangs there, so TCG
(``qemu``) is the only safe choice. The option ``--domain-type`` or ``SYSTEMVM_DOMAIN_TYPE`` overrides.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from systemvm.errors import UserError

DOMAIN_TYPES = ("kvm", "qemu")
ENV_OVERRIDE = "SYSTEMVM_DOMAIN_TYPE"
# Vendor modules whose KVM runs unmodified guest kernels.
STOCK_KVM_MODULES = ("kvm_intel", "kvm_amd")


@dataclasses.dataclass(frozen=True)
class AccelProbe:
    """What was found, so a report can say why TCG was chosen."""

    domain_type: str
    reason: str


def cpu_has_virt_extensions(cpuinfo: str) -> bool:
    """True when any ``flags`` line of /proc/cpuinfo lists ``vmx`` or ``svm``."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and {"vmx", "svm"} & set(value.split()):
            return True
    return False


def stock_kvm_module(sys_module: Path) -> str | None:
    """The loaded KVM vendor module that runs unmodified kernels (``kvm_intel``/``kvm_amd``), or None."""
    for name in STOCK_KVM_MODULES:
        if (sys_module / name).is_dir():
            return name
    return None


def probe_domain_type(
    dev_kvm: Path = Path("/dev/kvm"),
    cpuinfo: Path = Path("/proc/cpuinfo"),
    sys_module: Path = Path("/sys/module"),
) -> AccelProbe:
    """Detect the domain type from the host, without the override."""
    if not dev_kvm.exists():
        return AccelProbe("qemu", f"{dev_kvm} does not exist")
    if not os.access(dev_kvm, os.R_OK | os.W_OK):
        return AccelProbe("qemu", f"{dev_kvm} is not readable and writable by this user")
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError as exc:
        return AccelProbe("qemu", f"cannot read {cpuinfo}: {exc.strerror}")
    if not cpu_has_virt_extensions(text):
        return AccelProbe("qemu", f"{cpuinfo} shows neither vmx nor svm")
    module = stock_kvm_module(sys_module)
    if module is None:
        others = sorted(p.name for p in sys_module.glob("kvm_*")) if sys_module.is_dir() else []
        found = f" (only {', '.join(others)})" if others else ""
        return AccelProbe("qemu", f"no kvm_intel or kvm_amd module loaded{found}: a stock kernel cannot run")
    return AccelProbe("kvm", f"{dev_kvm} usable, CPU has vmx/svm, {module} loaded")


def choose_domain_type(override: str | None = None, environ: dict[str, str] | None = None) -> AccelProbe:
    """The domain type to use: ``override`` (option), else ``$SYSTEMVM_DOMAIN_TYPE``, else detection."""
    environ = dict(os.environ) if environ is None else environ
    for value, source in ((override, "option"), (environ.get(ENV_OVERRIDE), ENV_OVERRIDE)):
        if value:
            value = value.strip().lower()
            if value not in DOMAIN_TYPES:
                raise UserError(f"unknown domain type '{value}' from {source}: use kvm or qemu")
            return AccelProbe(value, f"set by {source}")
    return probe_domain_type()


def domain_type(override: str | None = None) -> str:
    return choose_domain_type(override).domain_type
