"""System VM user data (CloudStack 4.22, PR 11654): cloud-init's NoCloud stages, once, from the command line.

Runs inside the VM (standard library only, Python 3.11), as a step of the boot after the services are
enabled and **before** ``/var/cache/cloud/boot_up_done`` is written: CloudStack's version handshake waits for
that file, so a management server sees the VM ready only once the user data has run. What it does is what
4.22's ``systemvm/debian/opt/cloud/bin/setup/postinit.sh`` does for the ``userdata=`` key (read in the
index as id 4753745239; the code here is our own):

1. the key's value, taken from the raw command line so its base64 padding survives, is base64 of the gzip of
   the user data (the management server adds it only when ``systemvm.userdata.enabled`` is on and the zone's
   ``secstorage.vm.userdata``/``console.proxy.vm.userdata``/``virtual.router.userdata`` names a user data);
2. ``/etc/cloud/cloud.cfg.d/cloudstack.cfg`` is replaced by a configuration for the NoCloud source alone,
   with cloud-init's network configuration off, ``/etc/hosts`` and ``resolv.conf`` left to the boot, no users
   made, and short module lists (what a system VM's user data may do: files, mounts, runcmd, scripts);
3. the NoCloud seed: ``/var/lib/cloud/seed/nocloud/user-data`` (0600) and ``meta-data`` (0644) whose
   ``instance-id`` and ``local-hostname`` are the command line's ``name=`` (else the host name);
4. ``cloud-init init --local``, ``cloud-init init``, ``cloud-init modules --mode=config`` and
   ``cloud-init modules --mode=final``, in that order, each only after the one before succeeded.

cloud-init's units stay disabled and ``/etc/cloud/cloud-init.disabled`` stays in place (element
``systemvm-cloud-init``): only this step runs it. Without ``userdata=`` nothing is touched (a 4.20 management
server never sends the key). The user data itself is never logged: it may hold secrets.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import os
import subprocess
import zlib

from systemvm import contract
from systemvm.guest.system import Guest

KEY = "userdata"
CLOUD_CFG_PATH = "/etc/cloud/cloud.cfg.d/cloudstack.cfg"
DISABLED_MARKER = "/etc/cloud/cloud-init.disabled"
SEED_DIR = "/var/lib/cloud/seed/nocloud"
USER_DATA_PATH = f"{SEED_DIR}/user-data"
META_DATA_PATH = f"{SEED_DIR}/meta-data"
# cloud-init's stages, as systemd would run them at boot, by hand.
STAGES: tuple[tuple[str, ...], ...] = (
    ("cloud-init", "init", "--local"),
    ("cloud-init", "init"),
    ("cloud-init", "modules", "--mode=config"),
    ("cloud-init", "modules", "--mode=final"),
)
# What a system VM's user data may use: the module lists of 4.22's postinit.sh.
INIT_MODULES = ("migrator", "seed_random", "bootcmd", "write-files", "growpart", "resizefs", "disk_setup",
                "mounts", "rsyslog")  # fmt: skip
CONFIG_MODULES = ("locale", "timezone", "runcmd")
FINAL_MODULES = ("scripts-per-once", "scripts-per-boot", "scripts-per-instance", "scripts-user",
                 "final-message", "power-state-change")  # fmt: skip
# A decompressed user data larger than this is refused (CloudStack limits user data to 1 MiB base64 with
# POST, far less on the command line); a gzip bomb never fills the disk.
MAX_USER_DATA = 16 << 20


class UserDataError(ValueError):
    """The ``userdata=`` value does not decode to user data."""


def decode_user_data(value: str) -> bytes:
    """``base64(gzip(user data))`` -> the user data; :class:`UserDataError` when it is not that."""
    try:
        packed = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UserDataError(f"not base64 ({exc})") from None
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(packed)) as stream:
            data = stream.read(MAX_USER_DATA + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise UserDataError(f"not gzip ({exc})") from None
    if len(data) > MAX_USER_DATA:
        raise UserDataError(f"larger than {MAX_USER_DATA} bytes once decompressed")
    if not data.strip():
        raise UserDataError("empty once decompressed")
    return data


def nocloud_config() -> str:
    """The cloud-init configuration the user data runs under: the NoCloud source and nothing that would
    undo what the boot configured (network, /etc/hosts, resolv.conf, users, SSH)."""
    lines = [
        "#cloud-config",
        "# Written by the system VM's boot for the user data of its command line (CloudStack 4.22).",
        "datasource_list: ['NoCloud']",
        "network:",
        "  config: disabled",
        "manage_etc_hosts: false",
        "manage_resolv_conf: false",
        "users: []",
        "disable_root: false",
        "ssh_pwauth: false",
    ]
    for name, modules in (
        ("cloud_init_modules", INIT_MODULES),
        ("cloud_config_modules", CONFIG_MODULES),
        ("cloud_final_modules", FINAL_MODULES),
    ):
        lines.append(f"{name}:")
        lines += [f"  - {module}" for module in modules]
    return "\n".join(lines) + "\n"


def meta_data(instance: str) -> str:
    return f"instance-id: {instance}\nlocal-hostname: {instance}\n"


def instance_name(guest: Guest, config: contract.BootConfig) -> str:
    """The command line's ``name=`` (the VM's name in CloudStack), else the host name, else ``localhost``."""
    if config.name:
        return config.name
    try:
        return guest.path("/etc/hostname").read_text().strip() or "localhost"
    except OSError:
        return "localhost"


def run_user_data(guest: Guest, config: contract.BootConfig) -> bool | None:
    """Run the command line's user data through cloud-init once; call it before ``boot_up_done``.

    None when the command line has no ``userdata=`` (nothing is written or run); True when every cloud-init
    stage succeeded; False when the value did not decode or a stage failed (logged to cloud.log; the boot
    goes on, as CloudStack's does).
    """
    value = config.params.get(KEY)
    if not value:
        return None
    try:
        data = decode_user_data(value)
    except UserDataError as exc:
        guest.log(f"ERROR: user data not run: the userdata= value is {exc}")
        return False
    instance = instance_name(guest, config)
    guest.write(CLOUD_CFG_PATH, nocloud_config(), mode=0o644)
    _write_bytes(guest, USER_DATA_PATH, data, mode=0o600)
    guest.write(META_DATA_PATH, meta_data(instance), mode=0o644)
    guest.log(f"user data ({len(data)} bytes) seeded for cloud-init's NoCloud source as {instance}")
    for stage in STAGES:
        try:
            guest.run(list(stage))
        except (OSError, subprocess.SubprocessError) as exc:
            guest.log(f"ERROR: user data: '{' '.join(stage)}' failed: {_reason(exc)}")
            return False
    guest.log("user data: cloud-init's stages ran")
    return True


def _write_bytes(guest: Guest, absolute: str, data: bytes, mode: int) -> None:
    """Write beside the target, with ``mode`` from the start (user data may hold secrets), then rename."""
    target = guest.path(absolute)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, target)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        output = exc.stderr or exc.output or ""
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        last = [line for line in str(output).splitlines() if line.strip()][-1:] or [""]
        return f"exit {exc.returncode}" + (f": {last[0].strip()[:200]}" if last[0] else "")
    return str(exc) or type(exc).__name__
