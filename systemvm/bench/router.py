"""Bench section ``router``: forwarding through a KVM router in the network lab, then the site-to-site VPN's
start and tunnel set-up times."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from systemvm import contract
from systemvm.lab import csnetfilter, netlab, services, updateconfig
from systemvm.lab.routerlab import (
    VPN_TUNNELS,
    RouterLab,
    charon_answers,
    router_lab,
    vpn_connection,
    vpn_handlers,
    vpn_is_up,
    vpn_status_command,
    vpn_up_commands,
)

IPERF_SECONDS = 5


VPN_BENCH_WAIT = 300.0  # charon's start, then each tunnel: minutes at worst on an emulated guest


def bench_router(flavour: str, artifact: Path | None = None) -> list[tuple[str, str]]:
    """Rows for ``invoke bench``: a KVM router booted in the lab with the rules of the lab's handlers and
    the VPN's, applied through the model of CsNetfilter as the appliance checks apply them (SNAT out of
    eth2), then iperf3 from the guest client to the public server through it (TCP, ``IPERF_SECONDS``),
    both directions, then the site-to-site VPN: strongSwan's start and, per IKE version, ``ipsec reload``
    until the guest's first request through the tunnel is answered."""
    from systemvm.boot import patch
    from systemvm.boot.harness import VmRequest, boot_system_vm

    rows: list[tuple[str, str]] = []
    with router_lab() as rlab:
        plan = rlab.lab.plan
        services.start_iperf3(rlab.lab)
        request = VmRequest("kvm", flavour, "router", artifact=artifact, lab=rlab, with_patch=False)
        with boot_system_vm(request) as vm:
            rows.append(
                (f"{flavour} router: define to SSH on 3922 (in the lab)", f"{vm.timings['ssh']:.1f} s")
            )
            with patch.ssh_session(vm.target.host, vm.target.port, vm.key_file) as client:

                def run(command: str, check: bool = True) -> str:
                    status, output = patch.run_command(client, command, timeout=120)
                    if check and status != 0:
                        raise netlab.LabError(f"{command.split('|')[-1].strip()} failed: {output.strip()}")
                    return output

                # CloudStack's handlers log a failed command and go on; so does this
                handlers = vpn_handlers(plan, updateconfig.RouterSettings.from_cmdline(vm.cmdline))
                for command in [c for h in handlers for c in h.commands]:
                    run(command, check=False)
                role_rules = run(f"cat {contract.rules_file(vm.role)} 2>/dev/null", check=False)
                desired = updateconfig.desired_rules(handlers)
                for step in csnetfilter.compare(run("iptables-save"), desired, role_rules):
                    run(step.command, check=False)
                for direction, extra in (("guest -> public", ()), ("public -> guest", ("--reverse",))):
                    done = rlab.lab.exec(
                        "client", "iperf3", "--client", plan.server_ip, "--time", str(IPERF_SECONDS),
                        "--json", *extra, timeout=IPERF_SECONDS + 60,
                    )  # fmt: skip
                    bits = json.loads(done.stdout)["end"]["sum_received"]["bits_per_second"]
                    rows.append(
                        (f"{flavour} router: forwarding {direction} (iperf3 TCP)", f"{bits / 1e6:.0f} Mbit/s")
                    )
                rows += _bench_vpn(rlab, flavour, run)
    return rows


def _bench_vpn(rlab: RouterLab, flavour: str, run: Callable[..., str]) -> list[tuple[str, str]]:
    plan = rlab.lab.plan
    url = f"http://{plan.tunnel_ip}/"
    started = time.monotonic()
    run("ipsec start")
    _until(lambda: charon_answers(run("ipsec status || true")), "charon did not answer `ipsec status`")
    rows = [(f"{flavour} router: strongSwan start to answering", f"{time.monotonic() - started:.1f} s")]
    for version in VPN_TUNNELS:
        started = time.monotonic()
        for command in vpn_up_commands(plan, version):
            run(command)

        def through_tunnel() -> bool:
            if not vpn_is_up(run(f"{vpn_status_command(plan)} || true")):
                return False
            return rlab.lab.exec("client", "curl", "-s", "--max-time", "3", url, check=False).returncode == 0

        _until(through_tunnel, f"the {version} tunnel did not carry the guest's request")
        what = f"{flavour} router: IPsec {version} tunnel set-up (reload to first answer through it)"
        rows.append((what, f"{time.monotonic() - started:.1f} s"))
        run(f"ipsec down {vpn_connection(plan)}")
    return rows


def _until(predicate: Callable[[], bool], failure: str, timeout: float = VPN_BENCH_WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise netlab.LabError(f"{failure} within {timeout:.0f} s")
        time.sleep(0.5)
