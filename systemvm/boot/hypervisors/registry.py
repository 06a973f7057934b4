"""The one place that maps a hypervisor name to its driver class (imported only when asked for)."""

from __future__ import annotations

import importlib

from systemvm.boot.hypervisors.base import Driver
from systemvm.defaults import Hypervisor
from systemvm.errors import UserError

# name -> (module, class); modules are imported lazily so one driver's library is not needed by another.
DRIVERS: dict[str, tuple[str, str]] = {
    Hypervisor.KVM: ("systemvm.boot.hypervisors.kvm", "KvmDriver"),
    Hypervisor.XENSERVER: ("systemvm.boot.hypervisors.xenserver", "XenServerDriver"),
    Hypervisor.VMWARE: ("systemvm.boot.hypervisors.vmware", "VmwareDriver"),
}


def driver_class(name: str) -> type[Driver]:
    if name not in DRIVERS:
        raise UserError(f"unknown hypervisor '{name}': use one of {', '.join(DRIVERS)}")
    module_name, class_name = DRIVERS[name]
    return getattr(importlib.import_module(module_name), class_name)


def get_driver(name: str, **options: object) -> Driver:
    """A new driver for hypervisor ``name`` (kvm | xenserver | vmware); ``options`` go to its constructor."""
    return driver_class(name)(**options)
