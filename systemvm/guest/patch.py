"""cloud-patch: wait for the management server's patch, install it, start the agent, mark the boot done.

After a system VM boots, CloudStack's management server copies agent.zip, cloud-scripts.tgz and
patch-sysvms.sh into /var/cache/cloud/ over SSH (port 3922) and then waits for
/var/cache/cloud/boot_up_done. This program runs as cloud-patch.service (Type=simple, so the boot does not
wait for it) and does the image's half:

1. wait, with a bound, until all three files are there and no longer growing;
2. when cloud-scripts.tgz differs from the one recorded in cloud-scripts-signature (its MD5, what
   CloudStack's version handshake compares), unpack it over the image's scripts, record the new signature and
   keep the tarball as /usr/share/cloud/cloud-scripts.tgz, as CloudStack's template does;
3. for the roles that run an agent (secstorage, consoleproxy): unpack agent.zip into
   /usr/local/cloud/systemvm/, write the command line into its conf/agent.properties and (re)start
   cloud.service;
4. write /etc/cloudstack-release and /var/cache/cloud/boot_up_done.

patch-sysvms.sh is kept executable in /var/cache/cloud/: the management server runs it over SSH to patch
a running VM; the boot does not.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import sys
import tarfile
import time
import zipfile
from pathlib import Path, PurePosixPath

from systemvm import contract
from systemvm.guest.system import Guest

PATCH_WAIT = 900.0  # seconds; CloudStack patches a VM within a few minutes of SSH answering
VERSION_FILE = "/opt/cloud/lib/VERSION"  # the template version (element systemvm-guest writes it)


def patch_files_ready(guest: Guest, seen: dict[str, int]) -> bool:
    """True when every patch file exists and kept its size since the previous call (no copy under way)."""
    sizes = {}
    for name in contract.PATCH_FILES:
        try:
            sizes[name] = guest.path(f"{contract.CACHE_DIR}/{name}").stat().st_size
        except OSError:
            seen.clear()
            return False
    ready = sizes == seen and all(sizes.values())
    seen.clear()
    seen.update(sizes)
    return ready


def wait_for_patch(guest: Guest, timeout: float = PATCH_WAIT) -> bool:
    deadline = guest.clock() + timeout
    seen: dict[str, int] = {}
    while not patch_files_ready(guest, seen):
        if guest.clock() >= deadline:
            return False
        guest.sleep(1.0)
    return True


def _safe_member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"unsafe path in archive: {name}")
    return path


def unpack_scripts(data: bytes, root: Path) -> list[str]:
    """Unpack a cloud-scripts.tgz over ``root``: regular files, directories and relative links only."""
    names = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
        for member in archive.getmembers():
            relative = _safe_member_path(member.name)
            if not (member.isfile() or member.isdir() or member.issym()):
                raise ValueError(f"{member.name}: only files, directories and symlinks may be patched")
            if member.issym() and (member.linkname.startswith("/") or ".." in member.linkname.split("/")):
                raise ValueError(f"{member.name}: link to {member.linkname} leaves its directory")
            target = root / relative
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.exists() and not target.is_dir():
                target.unlink()
            if member.issym():
                target.symlink_to(member.linkname)
            else:
                tmp = target.with_name(f".{target.name}.patch")
                with archive.extractfile(member) as src, open(tmp, "wb") as dst:  # type: ignore[union-attr]
                    shutil.copyfileobj(src, dst)
                os.chmod(tmp, stat.S_IMODE(member.mode) & 0o755 | 0o600)
                os.replace(tmp, target)
            names.append(str(relative))
    return names


def update_scripts(guest: Guest) -> bool:
    """Unpack cloud-scripts.tgz when its MD5 differs from the recorded signature. True when unpacked."""
    data = guest.path(f"{contract.CACHE_DIR}/cloud-scripts.tgz").read_bytes()
    signature = hashlib.md5(data).hexdigest()  # CloudStack compares MD5s (md5sum's digest, nothing else)
    recorded = guest.path(contract.SCRIPTS_SIGNATURE_PATH)
    if recorded.exists() and recorded.read_text().split()[:1] == [signature]:
        guest.log("cloud-scripts.tgz matches the recorded signature; scripts left as they are")
        return False
    names = unpack_scripts(data, guest.root)
    guest.write(contract.SCRIPTS_SIGNATURE_PATH, signature + "\n")
    copy = guest.path(contract.SCRIPTS_COPY_PATH)
    copy.parent.mkdir(parents=True, exist_ok=True)
    tmp = copy.with_name(f".{copy.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, copy)
    guest.log(f"cloud-scripts.tgz unpacked ({len(names)} files), signature {signature}")
    return True


def unpack_agent(data: bytes, target: Path) -> None:
    """agent.zip into ``target`` (emptied first), keeping the executable bits zip records for Unix files."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            relative = _safe_member_path(info.filename)
            path = target / relative
            if info.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(archive.read(info))
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(path, (mode or 0o644) & 0o755 | 0o600)


def agent_properties(existing: str, params: dict[str, str]) -> str:
    """The agent's properties with the command line's keys added (the command line wins)."""
    lines = [line for line in existing.splitlines() if line.split("=", 1)[0].strip() not in params]
    lines += [f"{key}={value}" for key, value in params.items()]
    return "\n".join(lines) + "\n"


def install_agent(guest: Guest, config: contract.BootConfig) -> None:
    target = guest.path(contract.AGENT_DIR)
    unpack_agent(guest.path(f"{contract.CACHE_DIR}/agent.zip").read_bytes(), target)
    properties = guest.path(contract.AGENT_PROPERTIES)
    existing = properties.read_text() if properties.exists() else ""
    # The whole command line goes in, as CloudStack's bootstrap does: vmpassword and keystore_password
    # too, so root's only (the agent runs as root).
    guest.write(contract.AGENT_PROPERTIES, agent_properties(existing, config.params), mode=0o600)
    guest.log(f"agent unpacked into {contract.AGENT_DIR}")
    guest.run(["systemctl", "enable", "cloud.service"])
    guest.run(["systemctl", "restart", "--no-block", "cloud.service"])


def finish(guest: Guest) -> None:
    version_file = guest.path(VERSION_FILE)
    version = version_file.read_text().strip() if version_file.exists() else "unknown"
    guest.write(contract.RELEASE_PATH, f"Cloudstack Release {version} {time.strftime('%a %b %d %Y')}\n")
    guest.write(contract.BOOT_DONE_PATH, time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
    guest.log("boot up done")


def patch(guest: Guest, timeout: float = PATCH_WAIT) -> bool:
    """The whole sequence; False when the files did not arrive in time (then nothing is changed)."""
    config = contract.read_config(contract.parse_cmdline(_read(guest, contract.CMDLINE_PATH)))
    guest.log(f"waiting up to {timeout:.0f}s for {', '.join(contract.PATCH_FILES)} in {contract.CACHE_DIR}")
    if not wait_for_patch(guest, timeout):
        guest.log("no patch arrived in time; the VM runs unpatched and boot_up_done is not written")
        return False
    os.chmod(guest.path(f"{contract.CACHE_DIR}/patch-sysvms.sh"), 0o755)
    try:
        update_scripts(guest)
    except (OSError, ValueError, tarfile.TarError) as exc:
        guest.log(f"cloud-scripts.tgz not applied: {exc}")
    if config.role in contract.AGENT_ROLES:
        install_agent(guest, config)
    finish(guest)
    return True


def _read(guest: Guest, absolute: str) -> str:
    try:
        return guest.path(absolute).read_text(errors="replace")
    except OSError:
        return ""


def main() -> int:
    guest = Guest(program="cloud-patch")
    guest.path(contract.BOOT_DONE_PATH).unlink(missing_ok=True)  # this boot is not done yet
    patch(guest)
    return 0  # an unpatched VM is not a failed unit: it stays reachable over SSH


if __name__ == "__main__":
    sys.exit(main())
