"""``invoke boot``, ``invoke destroy`` and ``invoke clean``: one System VM through a hypervisor's own API."""

from __future__ import annotations

import sys
from pathlib import Path

from invoke import Context, task

from systemvm.defaults import DEFAULT_VERSION, HYPERVISORS
from systemvm.tasks import user_errors, whole_number


@task(
    help={
        "hypervisor": "kvm, xenserver or vmware (default kvm)",
        "flavour": "amd64, i386 or arm64 (default amd64)",
        "role": "secstorage, consoleproxy or router (default secstorage)",
        "version": f"template version X.Y.Z (default {DEFAULT_VERSION})",
        "artifact": "the exported artifact to boot (default artifacts/<version>/<export name>)",
        "keep": "leave the VM running; end it with 'invoke destroy --name <prefix>'",
        "no-patch": "do not deliver agent.zip/cloud-scripts.tgz/patch-sysvms.sh after SSH answers",
        "timeout": "seconds to wait for SSH on 3922 (default 600)",
        "domain-type": "KVM only: kvm or qemu (default: detected; env SYSTEMVM_DOMAIN_TYPE)",
    }
)
def boot(
    c: Context,
    hypervisor: str = "kvm",
    flavour: str = "amd64",
    role: str = "secstorage",
    version: str | None = None,
    artifact: str | None = None,
    keep: bool = False,
    no_patch: bool = False,
    timeout: str = "600",
    domain_type: str | None = None,
) -> None:
    """Boot a System VM and print how to reach it over SSH on 3922."""
    with user_errors():
        from systemvm.boot.harness import VmRequest, boot_system_vm
        from systemvm.progress import say

        options: dict[str, object] = (
            {"domain_type": domain_type} if domain_type and hypervisor == "kvm" else {}
        )
        try:
            request = VmRequest(
                hypervisor,
                flavour,
                role,
                version=version or DEFAULT_VERSION,
                artifact=Path(artifact) if artifact else None,
                keep=keep,
                with_patch=not no_patch,
                ssh_timeout=float(whole_number(timeout, "--timeout")),
                driver_options=options,
            )
            with boot_system_vm(request) as vm:
                print(f"{vm.run_prefix}-{vm.name}: SSH on 3922 answers")
                print(f"  {vm.how_to_reach()}")
                print(f"  testinfra: {vm.target.testinfra_url()}")
                print(f"  command line: {vm.cmdline}")
                if keep:
                    print(f"  end it with: invoke destroy --name {vm.run_prefix}")
                else:
                    say("    destroying it now (use --keep to leave it running)")
        except RuntimeError as exc:  # the VM did not come up: message and console tail, exit 1
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None


@task(
    help={
        "name": "run prefix (e.g. svmt-3f9a1c) whose VMs and files are removed",
        "hypervisor": "kvm, xenserver, vmware (default kvm)",
    }
)
def destroy(
    c: Context,
    name: str,
    hypervisor: str = "kvm",
) -> None:
    """End a VM that 'invoke boot --keep' left running (everything named with the prefix)."""
    with user_errors():
        from systemvm.boot.harness import destroy_by_prefix
        from systemvm.errors import UserError

        if not name.startswith("svmt-"):
            raise UserError(
                f"'{name}' is not a run prefix: give the svmt-xxxxxx prefix 'invoke boot' printed"
            )
        for item in destroy_by_prefix(name, (hypervisor,)) or ["nothing found"]:
            print(f"removed {item}" if item != "nothing found" else f"{name}: nothing found")


@task(
    help={
        "hypervisor": "kvm, xenserver or vmware (default kvm)",
        "prefix": "name prefix of VM leftovers (default svmt-: everything this tool created)",
        "artifacts": "artifacts directory whose <version>/.build-* dirs are checked (default ./artifacts)",
        "vms": "also remove VM leftovers on the hypervisor (default on; --no-vms for the builds' only)",
    }
)
def clean(
    c: Context,
    hypervisor: str = "kvm",
    prefix: str = "svmt-",
    artifacts: str | None = None,
    vms: bool = True,
) -> None:
    """Remove what killed runs left: a build's mounts, tmpfs, work directories and package cache daemon
    (only those whose build no longer runs), and VMs, disks and work directories by name prefix."""
    with user_errors():
        from systemvm.boot.harness import destroy_by_prefix
        from systemvm.build import leftovers
        from systemvm.defaults import ARTIFACTS_DIR
        from systemvm.errors import UserError

        if hypervisor not in HYPERVISORS:
            raise UserError(f"unknown hypervisor '{hypervisor}': use one of {', '.join(HYPERVISORS)}")
        builds = leftovers.sweep(Path(artifacts) if artifacts else ARTIFACTS_DIR)
        for item in builds:
            print(f"removed {item}")
        print(f"{len(builds)} build leftover(s) removed")
        if vms:
            removed = destroy_by_prefix(prefix, (hypervisor,))
            for item in removed:
                print(f"removed {item}")
            print(f"{len(removed)} leftover(s) removed from {hypervisor}")
