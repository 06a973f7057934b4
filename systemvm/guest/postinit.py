"""systemvm-postinit: the end of every boot, as CloudStack's cloud-postinit ends it
(systemvm/debian/opt/cloud/bin/setup/postinit.sh).

Runs after cloud-early-config and the network (systemvm-postinit.service), and before sshd, so that a
management server that sees SSH answer finds the boot done:

1. a router's data bags converged by CloudStack's own ``update_config.py cmd_line.json`` -- only where a
   patch from the management server brought CloudStack's scripts (the image has none of its own);
2. the role's services enabled and started, the others stopped and disabled (``enabled_svcs`` and
   ``disabled_svcs``, written by cloud-early-config);
3. the command line's user data run once through cloud-init (``userdata=``, CloudStack 4.22,
   :mod:`systemvm.guest.userdata`; nothing without the key);
4. the saved rules restored (``/etc/iptables/rules.v4`` and ``rules.v6``: the role's base rules, or what
   CloudStack's scripts saved after converging);
5. ``/var/cache/cloud/boot_up_done``, which CloudStack's version handshake waits for.

Nothing else: patches are the management server's to run (it copies agent.zip, cloud-scripts.tgz and
patch-sysvms.sh and runs the script at once); the image never acts on those files by itself.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from systemvm import contract
from systemvm.guest import userdata
from systemvm.guest.system import Guest

UPDATE_CONFIG = "/opt/cloud/bin/update_config.py"
ROUTER_ROLES = ("router", "vpcrouter", "dhcpsrvr")
# Services are switched in batches: every `systemctl enable/disable` reloads systemd and, for units that
# also ship a SysV script, runs update-rc.d through systemd-sysv-install -- about 10 s per call under
# emulation, a fifth of the boot. SYSTEMCTL_SKIP_SYSV=1 leaves the rc links alone (systemd ignores them for
# units that have a native unit file) and --no-reload skips the reload: `--now` starts the units directly,
# and the enablement symlinks that `is-enabled` and the next boot read are written all the same.
SYSTEMCTL_NO_SYSV = ("env", "SYSTEMCTL_SKIP_SYSV=1", "systemctl")


def read_list(guest: Guest, path: str) -> list[str]:
    listed = guest.path(path)
    return listed.read_text().split() if listed.is_file() else []


def converge_router(guest: Guest, config: contract.BootConfig) -> None:
    """CloudStack's update_config.py on the command line's data bag, for the router roles, when a patch
    installed it (a failure is logged: the boot goes on, as CloudStack's postinit does)."""
    script = guest.path(UPDATE_CONFIG)
    if config.role not in ROUTER_ROLES or not (script.is_file() and os.access(script, os.X_OK)):
        return
    try:
        guest.run([UPDATE_CONFIG, os.path.basename(contract.CMD_LINE_JSON_PATH)])
        guest.log("update_config.py cmd_line.json done")
    except Exception as exc:  # noqa: BLE001 - logged; the boot goes on
        guest.log(f"update_config.py cmd_line.json failed: {exc}")


def _state_of(block: str) -> str:
    fields = dict(line.partition("=")[::2] for line in block.splitlines() if "=" in line)
    if fields.get("LoadState") in ("not-found", "masked"):
        return fields["LoadState"]
    return fields.get("UnitFileState") or "unknown"


def unit_states(guest: Guest, services: list[str]) -> dict[str, str]:
    """'not-found', 'masked' or the unit file state of every service, from one ``systemctl show`` (one
    block per unit, in argument order), else one call per service."""
    if not services:
        return {}
    units = [f"{s}.service" for s in services]
    query = ["systemctl", "show", "-p", "LoadState", "-p", "UnitFileState"]
    try:
        blocks = guest.run([*query, *units]).strip("\n").split("\n\n")
        if len(blocks) == len(units):
            return {s: _state_of(b) for s, b in zip(services, blocks, strict=True)}
    except Exception:  # noqa: BLE001 - fall back to asking one unit at a time
        pass
    states = {}
    for service in services:
        try:
            states[service] = _state_of(guest.run([*query, f"{service}.service"]))
        except Exception as exc:  # noqa: BLE001 - one service must not stop the others
            guest.log(f"reading the state of {service} failed: {exc}")
            states[service] = "unknown"
    return states


def sysv_enabled(guest: Guest, service: str) -> bool:
    """A SysV script is started at boot when a runlevel directory has its S link."""
    return any(guest.path("/etc").glob(f"rc[2-5].d/S[0-9][0-9]{service}"))


def _in_batch(guest: Guest, argv: list[str], services: list[str], doing: str) -> None:
    """Run ``argv`` for all services at once; if that fails, one by one so one bad unit costs only itself."""
    if not services:
        return
    try:
        guest.run([*argv, *(f"{s}.service" for s in services)])
        return
    except Exception:  # noqa: BLE001 - retried per service below
        pass
    for service in services:
        try:
            guest.run([*argv, f"{service}.service"])
        except Exception as exc:  # noqa: BLE001 - one service must not stop the others
            guest.log(f"{doing} {service} failed: {exc}")


def apply_services(guest: Guest, config: contract.BootConfig | None = None) -> None:
    """enabled_svcs enabled and started, disabled_svcs stopped and disabled (jobs queued, --no-block)."""
    enabled = read_list(guest, contract.ENABLED_SVCS_PATH)
    disabled = read_list(guest, contract.DISABLED_SVCS_PATH)
    states = unit_states(guest, [*disabled, *enabled])
    absent = ("not-found", "masked")
    # Stop separately: `disable --now` refuses units generated from SysV scripts (xl2tpd) before it stops
    # anything. The queued stop replaces a start the boot may have queued for the unit.
    to_disable = [s for s in disabled if states[s] not in (*absent, "disabled", "static", "generated")]
    _in_batch(guest, [*SYSTEMCTL_NO_SYSV, "disable", "--no-reload"], to_disable, "disabling")
    for service in disabled:
        if states[service] == "generated" and sysv_enabled(guest, service):
            try:
                guest.run(["/lib/systemd/systemd-sysv-install", "disable", service])
            except Exception as exc:  # noqa: BLE001 - one service must not stop the others
                guest.log(f"disabling {service} failed: {exc}")
    running = [s for s in disabled if states[s] not in absent]
    _in_batch(guest, ["systemctl", "stop", "--no-block"], running, "stopping")
    for service in enabled:
        if states[service] in absent:  # e.g. nfs-common: Debian masks it and starts its parts on demand
            guest.log(f"service {service} is {states[service]}; nothing to start")
    to_enable = [s for s in enabled if states[s] not in absent]
    enable_now = [*SYSTEMCTL_NO_SYSV, "enable", "--no-reload", "--now", "--no-block"]
    _in_batch(guest, enable_now, to_enable, "enabling")


def restore_rules(guest: Guest, config: contract.BootConfig | None = None) -> None:
    for command, path in (("iptables-restore", contract.RULES_V4_PATH),
                          ("ip6tables-restore", contract.RULES_V6_PATH)):  # fmt: skip
        if guest.path(path).is_file():
            try:
                guest.run([command, str(guest.path(path))])
            except Exception as exc:  # noqa: BLE001 - logged; the boot goes on
                guest.log(f"{command} {path} failed: {exc}")


def mark_boot_done(guest: Guest, config: contract.BootConfig | None = None) -> None:
    guest.write(contract.BOOT_DONE_PATH, time.strftime("%a %b %d %H:%M:%S %Z %Y") + "\n")
    guest.log("boot up done")


def boot_config(guest: Guest) -> contract.BootConfig:
    """The command line this boot was configured from (cloud-early-config keeps it in the cache)."""
    text = guest.path(contract.CMDLINE_PATH)
    params = contract.parse_cmdline(text.read_text(errors="replace")) if text.is_file() else {}
    return contract.read_config(params)


def run_user_data(guest: Guest, config: contract.BootConfig) -> None:
    userdata.run_user_data(guest, config)


STEPS: tuple[Callable[[Guest, contract.BootConfig], None], ...] = (
    converge_router,
    apply_services,
    run_user_data,
    restore_rules,
    mark_boot_done,
)


def postinit(guest: Guest) -> None:
    config = boot_config(guest)
    for step in STEPS:
        try:
            step(guest, config)
        except Exception as exc:  # noqa: BLE001 - one failed step must not stop the others
            guest.log(f"{step.__name__} failed: {type(exc).__name__}: {exc}")


def main() -> int:
    postinit(Guest(program="systemvm-postinit"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
