"""Build a System VM raw disk per flavour: diskimage-builder makes the root filesystem, we make the disk.

Flow (one code path on every host, device-mapper or not):
1. ``disk-image-create`` with our elements and a block-device config of a whole loop device with one ext4
   filesystem and *no partition table* (so no kpartx/device-mapper), output ``raw`` = the filesystem image.
   A foreign flavour's programs (arm64 on x86) run in the chroot through qemu-user (binfmt_misc).
2. :mod:`systemvm.build.disk` assembles the MBR disk file around it and embeds GRUB (boot.img/core.img
   made inside the image by elements/systemvm-base, read back with ``debugfs``, no mount needed); for a
   UEFI flavour (arm64) :mod:`systemvm.build.uefidisk` assembles a GPT disk with an EFI system partition
   holding GRUB's EFI program (made inside the image too) at the removable-media path.
3. The manifest (JSON) records flavour, release, kernel, packages with versions, sizes, timings, elements,
   git commit, SOURCE_DATE_EPOCH, the CloudStack line's profile (:mod:`systemvm.profile`: the export, the
   checks and the release diff read it back) and the scripts signature the image carries. All is built in
   a temp dir beside the output and renamed at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, TypedDict

from systemvm import contract, defaults, diskdigest, hosttools, naming
from systemvm.build import aptcache, disk, leftovers, mirror, uefidisk
from systemvm.build import cloudstack_scripts as cloudstack_scripts_element
from systemvm.build.cloudstack_scripts import CloudStackScripts
from systemvm.build.dibprogress import DibProgress
from systemvm.errors import DefectFound, UserError, tool_failed
from systemvm.profile import CloudStackProfile, profile_for
from systemvm.progress import human_bytes, phase, say

REPO = Path(__file__).resolve().parents[2]
ELEMENTS_DIR = defaults.elements_dir()
DEBIAN_RELEASE = "bookworm"
LABEL = "cloudrootfs"
BUILD_RECORD = "/usr/share/systemvm/build"  # what elements/systemvm-base records inside the image
# What elements/systemvm-base makes inside the image for the disk: GRUB's BIOS boot code, or its EFI program.
BIOS_BOOT_IMG = "/boot/grub/i386-pc/boot.img"
BIOS_CORE_IMG = "/boot/grub/i386-pc/core.img"
EFI_PROGRAM = "/boot/grub/arm64-efi/BOOTAA64.EFI"
# Ours after diskimage-builder's debian-minimal; order does not matter to DIB (phases order the scripts).
ELEMENTS = (
    "debian-minimal",
    "systemvm-base",
    "systemvm-cleanup",
    "systemvm-packages",
    "systemvm-ssh",
    "systemvm-guest",
    "systemvm-boot",
    "systemvm-firewall",
    "systemvm-agent",
    "systemvm-cloud-init",
    "systemvm-scripts-signature",
)
# What debian-minimal's root.d/75-debian-minimal-baseinstall installs right after the bootstrap, with the
# Recommends its `apt-get install` adds (mmdebstrap installs none), so that the image's package set stays
# what the apt-only build made; and usr-is-merged, which that build had. (mmdebstrap's essential stage
# still adds usrmerge and three small Perl libraries for init-system-helpers' "usrmerge | usr-is-merged".)
DIB_BASE_PACKAGES = ("systemd-sysv", "busybox", "sudo", "gnupg2", "python3", "dbus-user-session",
                     "krb5-locales", "libgpm2", "libldap-common", "libnss-systemd", "libsasl2-modules",
                     "systemd-timesyncd", "usr-is-merged")  # fmt: skip
# These ask debconf questions that elements/systemvm-packages answers before installing them.
NOT_BOOTSTRAPPED = frozenset({"iptables-persistent", "netfilter-persistent"})
BOOTSTRAP_CACHES_KEPT = 2  # per flavour: the current package set and the one before
MIN_SIZE_GIB, MAX_SIZE_GIB = 2, 64  # the image uses just over 1 GiB; CloudStack's templates are 2-5 GiB


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


class ManifestSizes(TypedDict):
    rootfs_bytes: int
    rootfs_used_bytes: int
    raw_disk_virtual_bytes: int
    raw_disk_allocated_bytes: int


class ManifestDisk(TypedDict, total=False):
    partition_table: str  # dos (BIOS flavours) or gpt (UEFI flavours)
    partition_start_bytes: int  # the root filesystem's
    core_img_sectors: int  # BIOS: GRUB's core.img, embedded before the partition
    esp_start_bytes: int  # UEFI: the EFI system partition
    esp_bytes: int
    efi_program: str  # UEFI: GRUB's EFI program in the EFI system partition
    efi_program_bytes: int


class ManifestRawDisk(TypedDict):
    """What the export compares the raw disk with before it writes anything (:mod:`systemvm.diskdigest`)."""

    size: int
    digest: str
    method: str


class PackageRecord(TypedDict):
    """One installed package: dpkg's fields and the apt suites whose index lists this version."""

    version: str
    architecture: str
    source: str
    source_version: str
    suites: list[str]


# How the build decides where a package came from; the release diff quotes it.
APT_ORIGIN_METHOD = (
    "the build records per package the suites whose Packages index (as apt in the image chroot had it) "
    "lists the installed version and architecture "
    "(elements/systemvm-base/post-install.d/89-record-apt-origins)"
)


class BuildManifest(TypedDict):
    """``<stem>.manifest.json``: what one flavour's build made (the export adds to ``artifacts``)."""

    flavour: str
    arch: str
    version: str
    debian_release: str
    debian_mirror: str
    apt_sources: list[str]
    apt_suites_skipped: list[str]
    kernel: str
    elements: list[str]
    package_list: list[str]
    packages: dict[str, str]
    package_records: dict[str, PackageRecord]
    apt_origin_method: str
    sizes: ManifestSizes
    disk: ManifestDisk
    raw_disk: ManifestRawDisk
    timings: dict[str, float]
    bootstrap: dict[str, Any]
    build_seconds: float
    offline: bool
    git_commit: str
    source_date_epoch: int
    artifacts: dict[str, Any]
    cloudstack_scripts: dict[str, Any] | None  # what --cloudstack-scripts baked in (None: nothing)
    cloudstack_profile: dict[str, Any]  # the CloudStack line the image is for (systemvm.profile)
    scripts_signature: dict[str, Any]  # cloud-scripts-signature as read back from the image


def source_date_epoch() -> int:
    """The release's time, read once per build (:func:`build_flavours`) and recorded in every manifest, from
    which the exports take it: ``$SOURCE_DATE_EPOCH``, else the last commit's time, else now."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        value = os.environ["SOURCE_DATE_EPOCH"]
        if not value.isdigit():
            raise UserError(f"SOURCE_DATE_EPOCH={value!r} is not a whole number: set seconds since 1970")
        return int(value)
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


def available_elements(cloudstack_scripts: CloudStackScripts | None = None) -> list[str]:
    """Our elements that exist in this checkout (debian-minimal comes with diskimage-builder), and the one
    that bakes CloudStack's scripts in when the build was given them."""
    found = [e for e in ELEMENTS if not e.startswith("systemvm-") or (ELEMENTS_DIR / e).is_dir()]
    if cloudstack_scripts is not None:
        found.append(cloudstack_scripts_element.ELEMENT)
    return found


def check_baked_scripts(
    fs_image: Path, scripts: CloudStackScripts, profile: CloudStackProfile
) -> dict[str, Any]:
    """Read back what the element baked in; the manifest's ``cloudstack_scripts`` record.

    The signature must be the tarball's digest in the line's algorithm (MD5 for 4.20, SHA-512 for 4.22),
    the digest alone (as CloudStack's build writes it), or a management server of that version would find
    a mismatch: then the build fails instead.
    """
    signature = _debugfs_read(fs_image, cloudstack_scripts_element.SIGNATURE_PATH).decode().strip()
    expected = scripts.digest(profile.scripts_digest)
    if signature != expected:
        raise DefectFound(
            f"the image's {cloudstack_scripts_element.SIGNATURE_PATH} reads {signature!r}, not the "
            f"{profile.scripts_digest} {expected} of {scripts.source}: see "
            f"{cloudstack_scripts_element.ELEMENT} in the build log"
        )
    record = scripts.manifest()
    kept = {
        cloudstack_scripts_element.AGENT: scripts.agent_zip,
        cloudstack_scripts_element.PATCH_SCRIPT: scripts.patch_script,
    }
    for name, data in kept.items():  # from a .deb: the other two files, byte for byte
        path = f"{cloudstack_scripts_element.IMAGE_DIR}/{name}"
        if data is not None and _debugfs_read(fs_image, path) != data:
            raise DefectFound(
                f"the image's {path} differs from the one in {scripts.source}: "
                f"see {cloudstack_scripts_element.ELEMENT} in the build log"
            )
    replaced = _debugfs_read(fs_image, cloudstack_scripts_element.REPLACED_RECORD).decode()
    record["replaced_image_files"] = [line for line in replaced.splitlines() if line]
    units = _debugfs_read(fs_image, cloudstack_scripts_element.BOOT_UNITS_RECORD).decode()
    record["boot_units"] = [line for line in units.splitlines() if line]  # CloudStack's, in charge
    return record


def check_scripts_signature(fs_image: Path, profile: CloudStackProfile) -> dict[str, Any]:
    """The manifest's ``scripts_signature``: the image's signature, which must be one line holding the digest
    (in the line's algorithm) of the tarball the image keeps, whoever packed it; else the build fails."""
    raw = _debugfs_read(fs_image, contract.SCRIPTS_SIGNATURE_PATH).decode(errors="replace")
    tarball = _debugfs_read(fs_image, contract.SCRIPTS_COPY_PATH)
    expected = profile.digest(tarball)
    if raw != expected + "\n":
        raise DefectFound(
            f"the image's {contract.SCRIPTS_SIGNATURE_PATH} reads {raw.strip()[:140]!r}, not the "
            f"{profile.scripts_digest} {expected} of {contract.SCRIPTS_COPY_PATH}: see "
            "systemvm-scripts-signature in the build log"
        )
    return {
        "path": contract.SCRIPTS_SIGNATURE_PATH,
        "algorithm": profile.scripts_digest,
        "digest": expected,
        "scripts": contract.SCRIPTS_COPY_PATH,
        "scripts_bytes": len(tarball),
    }


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


def _run_dib(env: dict[str, str], args: list[str], log_path: Path, label: str = "") -> None:
    """Run disk-image-create; everything it prints goes to the log, and a person sees one line per DIB phase
    and how far the long steps are (:class:`systemvm.build.dibprogress.DibProgress`)."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        progress = DibProgress(label)
        lock, stop = threading.Lock(), threading.Event()

        def beat() -> None:  # time-based updates while no line comes (the tree being cached: a minute)
            while not stop.wait(1.0):
                with lock:
                    progress.tick()

        ticker = threading.Thread(target=beat, name=f"dib-progress-{label}", daemon=True)
        ticker.start()
        try:
            for raw in proc.stdout:
                log.write(raw)
                with lock:
                    progress.feed(raw.decode(errors="replace"))
            rc = proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
        finally:
            stop.set()
            ticker.join()
            progress.close()
    if rc != 0:
        raise tool_failed("diskimage-builder", rc, log_path.read_text(errors="replace"), log_path)


def _debugfs_read(fs_image: Path, path: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        subprocess.run(
            ["debugfs", "-R", f"dump {path} {out}", str(fs_image)], check=True, capture_output=True
        )
        if not out.exists():
            raise DefectFound(
                f"{path} is missing from the built filesystem: check the element that writes it"
            )
        return out.read_bytes()


def filesystem_used_bytes(fs_image: Path) -> int:
    out = subprocess.run(["dumpe2fs", "-h", str(fs_image)], check=True, capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    block = int(fields["Block size"])
    return (int(fields["Block count"]) - int(fields["Free blocks"])) * block


def allocated_bytes(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def read_packages(fs_image: Path) -> dict[str, PackageRecord]:
    """The image's record of its packages: ``packages.tsv`` (dpkg) joined with ``apt-origins.tsv``."""
    packages = parse_package_records(_debugfs_read(fs_image, f"{BUILD_RECORD}/packages.tsv").decode())
    try:
        origins = _debugfs_read(fs_image, f"{BUILD_RECORD}/apt-origins.tsv").decode()
    except UserError:  # an image built before the element recorded origins
        origins = ""
    add_apt_origins(packages, origins)
    return packages


def parse_package_records(text: str) -> dict[str, PackageRecord]:
    """``name, version, architecture[, source, source version]`` lines (dpkg-query) -> records.

    dpkg-query leaves the source fields empty for a package built from a source of its own name and
    version; a three-column file (an older image) gives the same.
    """
    packages: dict[str, PackageRecord] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, version, arch, *rest = line.split("\t")
        source, source_version = (rest + ["", ""])[:2]
        packages[name] = {
            "version": version,
            "architecture": arch,
            "source": source or name,
            "source_version": source_version or version,
            "suites": [],
        }
    return packages


def add_apt_origins(packages: dict[str, PackageRecord], text: str) -> None:
    """Add to each record the suites whose index lists its installed version (``apt-origins.tsv``)."""
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) != 4:
            continue
        name, version, arch, suite = fields
        record = packages.get(name)
        if record and (record["version"], record["architecture"]) == (version, arch):
            record["suites"] = sorted({*record["suites"], suite})


def requested_packages(flavour: str) -> list[str]:
    names: set[str] = set()
    for path in (ELEMENTS_DIR / "systemvm-packages").glob("packages*.txt"):
        if path.name in ("packages.txt", f"packages-{flavour}.txt"):
            for line in path.read_text().splitlines():
                word = line.split("#", 1)[0].strip()
                if word:
                    names.add(word)
    return sorted(names)


def element_packages(flavour: str) -> list[str]:
    """Packages our elements' package-installs.yaml files install for ``flavour``."""
    import yaml

    names: set[str] = set()
    for path in sorted(ELEMENTS_DIR.glob("systemvm-*/package-installs.yaml")):
        for name, spec in (yaml.safe_load(path.read_text()) or {}).items():
            arch = (spec or {}).get("arch")
            if spec and spec.get("uninstall"):
                continue
            if arch is None or flavour in str(arch).split(","):
                names.add(name)
    return sorted(names)


def bootstrap_packages(flavour: str) -> list[str]:
    """Everything the elements install, for mmdebstrap to put into diskimage-builder's cached bootstrap."""
    wanted = set(DIB_BASE_PACKAGES) | set(element_packages(flavour)) | set(requested_packages(flavour))
    return sorted(wanted - NOT_BOOTSTRAPPED)


def bootstrap_cache(flavour: str, include: list[str], sources: str, indexes: dict[str, str]) -> Path:
    """diskimage-builder's image cache directory for this package set and this state of the mirror.

    diskimage-builder caches the bootstrapped tree as a tarball and reuses it whenever it exists. We make
    mmdebstrap install every package of the image into that tree (``--include``), so an unchanged rebuild
    unpacks it and apt finds nothing left to install. The directory is keyed by the package list, the
    apt sources and the SHA256 of each suite's package index: a changed list or a mirror update (a
    security fix, a new kernel) makes a fresh bootstrap instead of upgrading a stale one.
    """
    key_text = json.dumps(
        {"flavour": flavour, "include": include, "sources": sources, "indexes": indexes, "layout": 1},
        indent=1,
        sort_keys=True,
    )
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    root = defaults.cache_root() / "dib"
    directory = root / f"bootstrap-{flavour}-{key}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "key.json").write_text(key_text + "\n")
    os.utime(directory)
    older = sorted(root.glob(f"bootstrap-{flavour}-*"), key=lambda d: d.stat().st_mtime, reverse=True)
    for stale in older[BOOTSTRAP_CACHES_KEPT:]:
        shutil.rmtree(stale, ignore_errors=True)
    return directory


# Run by mmdebstrap once the essential packages are in, before ours: update-initramfs is diverted to a
# no-op, so that the bootstrap does not make an initramfs the build throws away (elements/systemvm-base
# makes it once, after the module prune: its pre-install.d/05-defer-initramfs keeps this same diversion
# and post-install.d/85-make-initramfs removes it). Under qemu-user the bootstrap's mkinitramfs alone
# took over ten minutes of the arm64 build.
DEFER_INITRAMFS_HOOK = """#!/bin/sh
# mmdebstrap --essential-hook written by systemvm/build/image.py; $1 is the new root.
set -eu
tool=/usr/sbin/update-initramfs
chroot "$1" dpkg-divert --quiet --local --rename --divert "$tool.systemvm-deferred" --add "$tool"
mkdir -p "$1/usr/sbin"
printf '#!/bin/sh\\n# deferred by the bootstrap (systemvm/build/image.py)\\nexit 0\\n' > "$1$tool"
chmod 755 "$1$tool"
"""


def mmdebstrap_args(include: list[str], sources: str, work: Path) -> str:
    """DIB_MMDEBSTRAP_EXTRA_ARGS: our packages, the -updates/-security suites next to the main one, and
    the hook that defers the initramfs (:data:`DEFER_INITRAMFS_HOOK`).

    diskimage-builder gives mmdebstrap only the main suite; without the others the cached tree would hold
    older versions that every build then upgrades (a second kernel among them).
    """
    hook = (work / "defer-initramfs-hook").resolve()
    hook.write_text(DEFER_INITRAMFS_HOOK)
    hook.chmod(0o755)
    args = f"--include={','.join(include)} --essential-hook={hook}"
    extra = [
        line.split(":", 1)[1] for line in sources.splitlines() if line and not line.startswith("default:")
    ]
    if extra:
        listing = work / "bootstrap-suites.list"
        listing.write_text("\n".join(extra) + "\n")
        args += f" --setup-hook='copy-in {listing} /etc/apt/sources.list.d/'"
    return args


def check_version(version: str) -> CloudStackProfile:
    """The profile of ``version``'s CloudStack line; one line (exit 2) for a malformed (never a path) or
    unsupported one."""
    naming.check_version(version)
    return profile_for(version)


def check_host(*flavours: str) -> None:
    """Before anything is started or written: every build tool, and what a foreign flavour needs."""
    archs = list(flavours)  # a flavour is named by its Debian architecture
    hosttools.check_phase("build", archs)
    for arch in sorted(set(archs)):
        hosttools.check_foreign_arch(arch)


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    """A build's inputs, every one checked by :func:`plan_build`; nothing is started or written yet."""

    flavours: list[str]
    version: str
    debian_mirror: str  # the mirror URL, from --mirror, $SYSTEMVM_DEBIAN_MIRROR or the host's apt sources
    offline: bool
    size_gib: int
    jobs: int
    epoch: int  # SOURCE_DATE_EPOCH, read once for every flavour (:func:`source_date_epoch`)
    profile: CloudStackProfile  # the CloudStack line the version belongs to (:mod:`systemvm.profile`)
    cloudstack_scripts: CloudStackScripts | None = None


def check_size_gib(value: int | str) -> int:
    """The root filesystem's size in GiB: a whole number the image fits in (it uses just over 1 GiB)."""
    text = str(value).strip()
    if not text.isdigit() or not MIN_SIZE_GIB <= int(text) <= MAX_SIZE_GIB:
        raise UserError(
            f"--size-gib {value} is not a whole number of GiB from {MIN_SIZE_GIB} to {MAX_SIZE_GIB}: "
            "pass e.g. --size-gib 5"
        )
    return int(text)


def plan_build(
    flavours: list[str],
    version: str,
    *,
    mirror_url: str | None = None,
    offline: bool = False,
    size_gib: int | str = 5,
    jobs: int | str | None = None,
    cloudstack_scripts: CloudStackScripts | None = None,
) -> BuildPlan:
    """Check every input of a build (host tools, version, mirror, size, jobs) before anything starts."""
    check_host(*flavours)
    profile = check_version(version)
    return BuildPlan(
        flavours=list(flavours),
        version=version,
        debian_mirror=mirror.debian_mirror(mirror_url),
        offline=offline,
        size_gib=check_size_gib(size_gib),
        jobs=build_jobs(list(flavours), jobs),
        epoch=source_date_epoch(),
        profile=profile,
        cloudstack_scripts=cloudstack_scripts,
    )


def _build_one(flavour: str, plan: BuildPlan, artifacts: Path, proxy: str) -> BuildManifest:
    """Build one flavour's raw disk and manifest into ``artifacts/<version>/`` behind the package cache at
    ``proxy``; return the manifest."""
    version, debian, epoch = plan.version, plan.debian_mirror, plan.epoch
    offline, cloudstack_scripts = plan.offline, plan.cloudstack_scripts
    profile = plan.profile
    started = time.monotonic()
    timings: dict[str, float] = {}
    indexes: dict[str, str] = {}
    # the mirror answers before anything is written: a bad one leaves the last build's log as it was
    sources, skipped = mirror.apt_sources(debian, DEBIAN_RELEASE, flavour, proxy, indexes)
    out_dir = naming.version_dir(artifacts, version)
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "logs" / f"build-{flavour}.log"
    work = leftovers.new_work_dir(out_dir, flavour)
    run_dir = leftovers.new_run_dir(flavour)  # diskimage-builder's TMP_DIR: its dirs and mounts, ours by name
    try:
        with phase(f"{flavour}: root filesystem (diskimage-builder)"):
            log_path.write_bytes(b"")
            include = bootstrap_packages(flavour)
            image_cache = bootstrap_cache(flavour, include, sources, indexes)
            tarball = image_cache / f"debootstrap-debian-{DEBIAN_RELEASE}-{flavour}.tar.gz"
            complete = image_cache / "complete"
            if tarball.exists() and not complete.exists():
                # diskimage-builder writes the tarball in place: one without our marker may be cut short
                tarball.unlink()
            bootstrap = {"cache": image_cache.name, "reused": tarball.exists(), "packages": len(include)}
            say(
                f"    {flavour}: bootstrap with {len(include)} packages: "
                + (
                    "cached tree reused"
                    if bootstrap["reused"]
                    else f"mmdebstrap, then cached in {image_cache}"
                )
            )
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
                    "DIB_BLOCK_DEVICE_CONFIG": block_device_config(plan.size_gib),
                    "DIB_IMAGE_CACHE": str(image_cache),
                    "DIB_MMDEBSTRAP_EXTRA_ARGS": mmdebstrap_args(include, sources, work),
                    "DIB_DEBIAN_USE_DEBOOTSTRAP_CACHE": "1",
                    "DIB_DEBOOTSTRAP_CACHE": "1",
                    "DIB_APT_LOCAL_CACHE": "0",  # the proxy caches instead (see systemvm/aptcache.py)
                    "http_proxy": proxy,
                    "DIB_DEBUG_TRACE": "0",
                    "SYSTEMVM_SRC": str(REPO),
                    "SYSTEMVM_VERSION": version,
                    "SYSTEMVM_FLAVOUR": flavour,
                    "SOURCE_DATE_EPOCH": str(epoch),
                    "TMP_DIR": str(run_dir),
                    leftovers.RUN_ENV: str(run_dir),  # every process of this build carries it
                    **profile.build_environment(),
                }
            )
            if offline:
                env["DIB_OFFLINE"] = "1"
            if cloudstack_scripts is not None:
                staged = cloudstack_scripts.stage(work / "cloudstack-scripts")
                env[cloudstack_scripts_element.ENV] = str(staged)
            args = ["disk-image-create", "-a", flavour, "-t", "raw", "-o", str(work / "rootfs"),
                    *available_elements(cloudstack_scripts)]  # fmt: skip
            with host_devices_kept():
                _run_dib(env, args, log_path, label=f"{flavour}: ")
            if tarball.exists():
                complete.touch()  # the build that wrote (or read) it went through
        timings["rootfs_seconds"] = round(time.monotonic() - started, 1)
        fs_image = work / "rootfs.raw"
        raw_tmp = work / "disk.raw"
        t0 = time.monotonic()
        layout, disk_record = assemble(flavour, fs_image, raw_tmp, epoch)
        timings["assemble_seconds"] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()
        raw_record: ManifestRawDisk = {
            "size": raw_tmp.stat().st_size,
            "digest": diskdigest.content_digest(raw_tmp),
            "method": diskdigest.METHOD,
        }
        timings["digest_seconds"] = round(time.monotonic() - t0, 1)
        kernel = _debugfs_read(fs_image, f"{BUILD_RECORD}/kernel").decode().strip()
        records = read_packages(fs_image)
        packages = {name: record["version"] for name, record in records.items()}
        missing = [p for p in requested_packages(flavour) if p not in packages]
        if missing:
            raise DefectFound(f"requested packages not installed: {', '.join(missing)}; see {log_path}")
        baked = (
            check_baked_scripts(fs_image, cloudstack_scripts, profile)
            if cloudstack_scripts is not None
            else None
        )
        signature = check_scripts_signature(fs_image, profile)
        manifest: BuildManifest = {
            "flavour": flavour,
            "arch": naming.ARCH_OF[flavour],
            "version": version,
            "debian_release": DEBIAN_RELEASE,
            "debian_mirror": debian,
            "apt_sources": sources.splitlines(),
            "apt_suites_skipped": skipped,
            "kernel": kernel,
            "elements": available_elements(cloudstack_scripts),
            "package_list": requested_packages(flavour),
            "packages": packages,
            "package_records": records,
            "apt_origin_method": APT_ORIGIN_METHOD,
            "sizes": {
                "rootfs_bytes": layout.fs_bytes,
                "rootfs_used_bytes": filesystem_used_bytes(fs_image),
                "raw_disk_virtual_bytes": layout.disk_bytes,
                "raw_disk_allocated_bytes": allocated_bytes(raw_tmp),
            },
            "disk": disk_record,
            "raw_disk": raw_record,
            "timings": timings,
            "bootstrap": bootstrap,
            "build_seconds": round(time.monotonic() - started, 1),
            "offline": offline,
            "git_commit": git_commit(),
            "source_date_epoch": epoch,
            "artifacts": {},
            "cloudstack_scripts": baked,
            "cloudstack_profile": profile.record(),
            "scripts_signature": signature,
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
            f"{len(packages)} packages, kernel {kernel}, CloudStack {profile.line} "
            f"({profile.scripts_digest} signature), {manifest['build_seconds']:.0f} s"
        )
        return manifest
    finally:
        leftovers.remove_run(run_dir, f"{leftovers.RUN_ENV}={run_dir}")
        shutil.rmtree(work, ignore_errors=True)


def assemble(
    flavour: str, fs_image: Path, raw: Path, epoch: int
) -> tuple[disk.DiskLayout | uefidisk.GptLayout, ManifestDisk]:
    """The bootable disk around the root filesystem image: MBR and GRUB's BIOS boot code, or for a UEFI
    flavour a GPT with an EFI system partition; the layout and the manifest's ``disk`` record."""
    if flavour in defaults.UEFI_FLAVOURS:
        with phase(f"{flavour}: assemble GPT disk with an EFI system partition (GRUB for UEFI)"):
            program = _debugfs_read(fs_image, EFI_PROGRAM)
            gpt = uefidisk.assemble_uefi_disk(fs_image, raw, program, epoch)
        return gpt, {
            "partition_table": "gpt",
            "partition_start_bytes": gpt.partition_start,
            "esp_start_bytes": gpt.esp_start,
            "esp_bytes": gpt.esp_bytes,
            "efi_program": uefidisk.REMOVABLE_PATH,
            "efi_program_bytes": len(program),
        }
    with phase(f"{flavour}: assemble MBR disk with GRUB"):
        boot_img = _debugfs_read(fs_image, BIOS_BOOT_IMG)
        core_img = _debugfs_read(fs_image, BIOS_CORE_IMG)
        mbr = disk.assemble_disk(fs_image, raw, boot_img, core_img)
    return mbr, {
        "partition_table": "dos",
        "partition_start_bytes": mbr.partition_start,
        "core_img_sectors": mbr.core_sectors,
    }


def build_order(flavours: list[str]) -> list[str]:
    """Longest build first: a flavour whose programs run through qemu-user (arm64 on x86) takes several
    times as long as a native one."""
    return sorted(flavours, key=lambda f: f not in hosttools.QEMU_ARCH or f == hosttools.host_arch())


def build_jobs(flavours: list[str], jobs: int | str | None = None) -> int:
    """How many flavours to build at once: one per core by default (each build is mostly one process)."""
    if isinstance(jobs, str):
        if not jobs.isdigit():
            raise UserError(f"--jobs {jobs} is not a positive number: pass e.g. --jobs 2")
        jobs = int(jobs)
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs {jobs} is not a positive number: pass e.g. --jobs 2")
    return max(1, min(len(flavours), jobs or os.cpu_count() or 1))


def build_flavours(
    flavours: list[str],
    version: str,
    artifacts: Path,
    *,
    mirror_url: str | None = None,
    offline: bool = False,
    size_gib: int | str = 5,
    jobs: int | str | None = None,
    cloudstack_scripts: CloudStackScripts | None = None,
) -> list[BuildManifest]:
    """:func:`plan_build`, then :func:`run_build`: every flavour's raw disk and manifest."""
    plan = plan_build(
        flavours,
        version,
        mirror_url=mirror_url,
        offline=offline,
        size_gib=size_gib,
        jobs=jobs,
        cloudstack_scripts=cloudstack_scripts,
    )
    return run_build(plan, artifacts)


def run_build(plan: BuildPlan, artifacts: Path) -> list[BuildManifest]:
    """Build the plan's flavours, in parallel up to its ``jobs``, sharing one package cache proxy and one
    SOURCE_DATE_EPOCH; return their manifests (in the order of the plan's flavours).

    The builds share nothing else (each has its own diskimage-builder work dir, loop device and temp
    output dir), so one failing leaves the other to finish; the first failure is raised afterwards.
    """
    flavours = plan.flavours
    leftovers.report(leftovers.sweep(artifacts), "before the build")
    with aptcache.apt_proxy(offline=plan.offline) as proxy:
        one = functools.partial(_build_one, plan=plan, artifacts=artifacts, proxy=proxy)
        if plan.jobs == 1:
            return [one(f) for f in flavours]
        say(f"==> building {', '.join(flavours)} in parallel ({plan.jobs} at once)")
        with ThreadPoolExecutor(max_workers=plan.jobs, thread_name_prefix="build") as pool:
            # the emulated flavour first: started last, it alone would run on one core at the end
            started = {f: pool.submit(one, f) for f in build_order(flavours)}
            futures = [started[f] for f in flavours]
            wait(futures)
        failed = [(f, fut.exception()) for f, fut in zip(flavours, futures, strict=True) if fut.exception()]
        if failed:
            if len(failed) > 1:
                say(f"    also failed: {', '.join(f'{f} ({e})' for f, e in failed[1:])}")
            raise failed[0][1]  # type: ignore[misc]
        return [fut.result() for fut in futures]
