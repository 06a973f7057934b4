"""``invoke doctor``: for each phase, what this host lacks and the package that brings it."""

from __future__ import annotations

import sys

from invoke import Context, task

from systemvm import hosttools, naming
from systemvm.errors import UserError
from systemvm.tasks import user_errors

ALL_PHASES = ",".join(hosttools.PHASES)


@task(
    help={
        "phases": f"comma-separated phases to check (default: all of {','.join(hosttools.PHASES)})",
        "flavour": "flavours the build is for: amd64, i386, arm64 or all (a foreign architecture needs more)",
        "clean_room": "prove host-packages.txt on a fresh Debian 12 root (doctor, bootstrap trials)",
        "mirror": "Debian mirror URL for the clean room (default: $SYSTEMVM_DEBIAN_MIRROR, else the host's)",
        "register_binfmt": "as root: mount binfmt_misc and register qemu-user for the emulated flavours"
        " (arm64) with the F flag, as systemd-binfmt does at boot, then check",
    }
)
def doctor(
    c: Context,
    phases: str = ALL_PHASES,
    flavour: str = "all",
    clean_room: bool = False,
    mirror: str | None = None,
    register_binfmt: bool = False,
) -> None:
    """Check this host for every tool the phases run; exit 1 naming the packages to install if any lacks."""
    with user_errors():
        chosen = [p.strip() for p in phases.split(",") if p.strip()]
        archs = naming.flavours(flavour)
        if register_binfmt:
            for arch in archs:
                if arch in hosttools.QEMU_ARCH and arch != hosttools.host_arch():
                    print(hosttools.register_binfmt(arch))
        if clean_room:
            from systemvm.cleanroom import check_host_packages

            result = check_host_packages(archs, mirror_url=mirror)
            print(result.doctor_output.strip())
            for arch, outcome in result.trials.items():
                print(f"bootstrap trial {arch}: {outcome}")
            sys.exit(0 if result.ok else 1)
        sys.exit(report(chosen, archs))


def report(phases: list[str], archs: list[str], path: str | None = None) -> int:
    """One line per phase: ok, or what is missing and its package. Returns 1 when anything is missing."""
    lacking_all: list[hosttools.Need] = []
    for phase in phases:
        needs = hosttools.needs_for([phase], archs)
        lacking = hosttools.missing(needs, path=path)
        lacking_all += lacking
        if lacking:
            items = ", ".join(f"{n.tool} ({n.package})" for n in lacking)
            print(f"{phase:7} MISSING {items}")
        else:
            print(f"{phase:7} ok ({len(needs)} tools)")
    if "build" in phases and not lacking_all:
        for arch in sorted(set(archs)):
            try:
                hosttools.check_foreign_arch(arch)
            except UserError as exc:  # this kernel cannot run the flavour's programs
                print(f"build   CANNOT RUN {arch}: {exc}")
                return 1
    if lacking_all:
        print(f"to fix: {hosttools.packages_line(lacking_all)}  (./setup.sh installs everything)")
        return 1
    print("doctor: this host has everything the phases above need")
    return 0
