"""Build a System VM raw disk per flavour: diskimage-builder makes the root filesystem, we make the disk.

Flow (one code path on every host, device-mapper or not):
1. ``disk-image-create`` with our elements and a block-device config of a whole loop device with one ext4
   filesystem and *no partition table* (so no kpartx/device-mapper), output ``raw`` = the filesystem image.
2. :mod:`systemvm.disk` assembles the MBR disk file around it and embeds GRUB (boot.img/core.img made inside
   the image by elements/systemvm-base, read back with ``debugfs``, no mount needed).
3. The manifest (JSON) records flavour, release, kernel, packages with versions, sizes, timings, elements,
   git commit and SOURCE_DATE_EPOCH. All is built in a temp dir beside the output and renamed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from systemvm import aptcache, disk, mirror, naming
from systemvm.errors import UserError
from systemvm.hosttools import require_tools
from systemvm.progress import human_bytes, phase, say

REPO = Path(__file__).resolve().parent.parent
ELEMENTS_DIR = REPO / "elements"
DEBIAN_RELEASE = "bookworm"
LABEL = "cloudrootfs"
# Ours after diskimage-builder's debian-minimal; order does not matter to DIB (phases order the scripts).
ELEMENTS = (
    "debian-minimal",
    "systemvm-base",
    "systemvm-cleanup",
    "systemvm-packages",
    "systemvm-ssh",
    "systemvm-boot",
    "systemvm-firewall",
    "systemvm-agent",
)
HOST_TOOLS = ("disk-image-create", "debootstrap", "qemu-img", "sfdisk", "mkfs.ext4", "debugfs", "losetup",
              "apt-cacher-ng")  # fmt: skip


def block_device_config(size_gib: int) -> str:
    """A whole-device filesystem: local_loop + mkfs + mount, no partitioning (no kpartx needed)."""
    return f"""
- local_loop:
    name: image0
    size: {size_gib}GiB
- mkfs:
    name: mkfs_root
    base: image0
    type: ext4
    label: {LABEL}
    opts: "-i 16384 -O ^metadata_csum_seed"
    mount:
      mount_point: /
      fstab:
        options: "defaults,noatime,errors=remount-ro"
        fsck-passno: 1
"""


def source_date_epoch() -> int:
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "log", "-1", "--format=%ct"], capture_output=True, text=True
        )
        if out.returncode == 0 and out.stdout.strip():
            return int(out.stdout.strip())
    except OSError:
        pass
    return int(time.time())


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def available_elements() -> list[str]:
    """Our elements that exist in this checkout (debian-minimal comes with diskimage-builder)."""
    return [e for e in ELEMENTS if not e.startswith("systemvm-") or (ELEMENTS_DIR / e).is_dir()]


@contextlib.contextmanager
def host_devices_kept() -> Iterator[None]:
    """Restore owner, group and mode of host device nodes that package scripts in the chroot may change.

    diskimage-builder bind-mounts the host's /dev into the chroot; a package's postinst there ran
    ``chgrp kvm /dev/kvm`` with the *image's* kvm gid, which makes libvirt on the host re-probe QEMU on
    every call. We put such nodes back as they were.
    """
    nodes = [Path("/dev/kvm"), Path("/dev/net/tun"), Path("/dev/vhost-net")]
    before = {n: n.stat() for n in nodes if n.exists()}
    try:
        yield
    finally:
        for node, st in before.items():
            with contextlib.suppress(OSError):
                now = node.stat()
                if (now.st_uid, now.st_gid) != (st.st_uid, st.st_gid):
                    os.chown(node, st.st_uid, st.st_gid)
                if stat.S_IMODE(now.st_mode) != stat.S_IMODE(st.st_mode):
                    os.chmod(node, stat.S_IMODE(st.st_mode))


def _run_dib(env: dict[str, str], args: list[str], log_path: Path) -> None:
    """Run disk-image-create; print one line per DIB phase with elapsed time, everything else to the log."""
    start = time.monotonic()
    current = None
    pattern = re.compile(r"(?:hooks|in_target\.d)/([a-z-]+\.d)/")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                log.write(raw)
                match = pattern.search(raw.decode(errors="replace"))
                if match and match.group(1) != current:
                    current = match.group(1)
                    say(f"    [{time.monotonic() - start:6.1f} s] diskimage-builder {current}")
            rc = proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
    if rc != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise UserError(
            f"diskimage-builder failed (exit {rc}); see {log_path}; last line: {tail[-1] if tail else ''}"
        )


def _debugfs_read(fs_image: Path, path: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        subprocess.run(
            ["debugfs", "-R", f"dump {path} {out}", str(fs_image)], check=True, capture_output=True
        )
        if not out.exists():
            raise UserError(f"{path} is missing from the built filesystem: check the element that writes it")
        return out.read_bytes()


def filesystem_used_bytes(fs_image: Path) -> int:
    out = subprocess.run(["dumpe2fs", "-h", str(fs_image)], check=True, capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    block = int(fields["Block size"])
    return (int(fields["Block count"]) - int(fields["Free blocks"])) * block


def allocated_bytes(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def read_packages(fs_image: Path) -> dict[str, str]:
    text = _debugfs_read(fs_image, "/usr/share/systemvm/build/packages.tsv").decode()
    packages = {}
    for line in text.splitlines():
        name, version, _arch = line.split("\t")
        packages[name] = version
    return packages


def requested_packages(flavour: str) -> list[str]:
    names: set[str] = set()
    for path in (ELEMENTS_DIR / "systemvm-packages").glob("packages*.txt"):
        if path.name in ("packages.txt", f"packages-{flavour}.txt"):
            for line in path.read_text().splitlines():
                word = line.split("#", 1)[0].strip()
                if word:
                    names.add(word)
    return sorted(names)


def build_flavour(
    flavour: str,
    version: str,
    artifacts: Path,
    *,
    mirror_url: str | None = None,
    offline: bool = False,
    size_gib: int = 5,
) -> dict:
    """Build one flavour's raw disk and manifest into ``artifacts/<version>/``; return the manifest."""
    require_tools(*HOST_TOOLS)
    if not re.fullmatch(r"\d+\.\d+\.\d+(?:[-.+][0-9A-Za-z.-]+)?", version):
        raise UserError(f"version '{version}' is not X.Y.Z: pass e.g. --version 4.20.0")
    out_dir = naming.version_dir(artifacts, version)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "logs").mkdir(exist_ok=True)
    log_path = out_dir / "logs" / f"build-{flavour}.log"
    log_path.write_bytes(b"")
    debian = mirror.debian_mirror(mirror_url)
    epoch = source_date_epoch()
    cache = aptcache.cache_root()
    (cache / "dib").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    timings: dict[str, float] = {}
    sources, skipped = "", []
    work = Path(tempfile.mkdtemp(prefix=f".build-{flavour}-", dir=out_dir))
    try:
        with (
            aptcache.apt_proxy(offline=offline) as proxy,
            phase(f"{flavour}: root filesystem (diskimage-builder)"),
        ):
            sources, skipped = mirror.apt_sources(debian, DEBIAN_RELEASE, flavour, proxy)
            for suite in skipped:
                say(f"    WARNING: {suite} is inconsistent on the mirror for {flavour}; building without it")
            env = dict(os.environ)
            env.update(
                {
                    "ELEMENTS_PATH": str(ELEMENTS_DIR),
                    "DIB_RELEASE": DEBIAN_RELEASE,
                    "DIB_DISTRIBUTION_MIRROR": debian,
                    "DIB_DEBIAN_SECURITY_MIRROR": mirror.security_mirror(debian),
                    "DIB_APT_SOURCES_CONF": sources,
                    "DIB_BLOCK_DEVICE_CONFIG": block_device_config(size_gib),
                    "DIB_IMAGE_CACHE": str(cache / "dib"),
                    "DIB_DEBIAN_USE_DEBOOTSTRAP_CACHE": "1",
                    "DIB_DEBOOTSTRAP_CACHE": "1",
                    "DIB_APT_LOCAL_CACHE": "0",  # the proxy caches instead (see systemvm/aptcache.py)
                    "http_proxy": proxy,
                    "DIB_DEBUG_TRACE": "0",
                    "SYSTEMVM_SRC": str(REPO),
                    "SYSTEMVM_VERSION": version,
                    "SYSTEMVM_FLAVOUR": flavour,
                    "SOURCE_DATE_EPOCH": str(epoch),
                }
            )
            if offline:
                env["DIB_OFFLINE"] = "1"
            args = ["disk-image-create", "-a", flavour, "-t", "raw", "-o", str(work / "rootfs"), "--no-tmpfs",
                    *available_elements()]  # fmt: skip
            with host_devices_kept():
                _run_dib(env, args, log_path)
        timings["rootfs_seconds"] = round(time.monotonic() - started, 1)
        fs_image = work / "rootfs.raw"
        raw_tmp = work / "disk.raw"
        with phase(f"{flavour}: assemble MBR disk with GRUB"):
            t0 = time.monotonic()
            boot_img = _debugfs_read(fs_image, "/boot/grub/i386-pc/boot.img")
            core_img = _debugfs_read(fs_image, "/boot/grub/i386-pc/core.img")
            layout = disk.assemble_disk(fs_image, raw_tmp, boot_img, core_img)
            timings["assemble_seconds"] = round(time.monotonic() - t0, 1)
        kernel = _debugfs_read(fs_image, "/usr/share/systemvm/build/kernel").decode().strip()
        packages = read_packages(fs_image)
        missing = [p for p in requested_packages(flavour) if p not in packages]
        if missing:
            raise UserError(f"requested packages not installed: {', '.join(missing)}; see {log_path}")
        manifest = {
            "flavour": flavour,
            "arch": naming.ARCH_OF[flavour],
            "version": version,
            "debian_release": DEBIAN_RELEASE,
            "debian_mirror": debian,
            "apt_sources": sources.splitlines(),
            "apt_suites_skipped": skipped,
            "kernel": kernel,
            "elements": available_elements(),
            "package_list": requested_packages(flavour),
            "packages": packages,
            "sizes": {
                "rootfs_bytes": layout.fs_bytes,
                "rootfs_used_bytes": filesystem_used_bytes(fs_image),
                "raw_disk_virtual_bytes": layout.disk_bytes,
                "raw_disk_allocated_bytes": allocated_bytes(raw_tmp),
            },
            "disk": {
                "partition_start_bytes": layout.partition_start,
                "core_img_sectors": layout.core_sectors,
            },
            "timings": timings,
            "build_seconds": round(time.monotonic() - started, 1),
            "offline": offline,
            "git_commit": git_commit(),
            "source_date_epoch": epoch,
            "artifacts": {},
        }
        raw_final = naming.raw_disk(artifacts, version, flavour)
        manifest_final = naming.manifest(artifacts, version, flavour)
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.replace(raw_tmp, raw_final)
        os.replace(work / "manifest.json", manifest_final)
        sizes = manifest["sizes"]
        say(
            f"    {flavour}: {raw_final.name}: root fs used {human_bytes(sizes['rootfs_used_bytes'])}, "
            f"disk allocated {human_bytes(sizes['raw_disk_allocated_bytes'])}, "
            f"{len(packages)} packages, kernel {kernel}, {manifest['build_seconds']:.0f} s"
        )
        return manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)
