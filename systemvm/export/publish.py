"""What CloudStack publishes beside the images: bzip2 files, sha512sum.txt, md5sum.txt and metadata.ini.

metadata.ini follows ``engine/schema/templateConfig.sh`` (createMetadataFile) of the template's CloudStack
line (:mod:`systemvm.profile`): a blank line, ``[default]`` with ``version`` and ``downloadrepository``,
then one section per hypervisor (and architecture) with ``templatename``, ``checksum``, ``downloadurl``,
``filename``, ``arch`` and ``guestos``, each section followed by an empty line.

- ``checksum`` is the file's digest in the line's algorithm, read from the listing templateConfig.sh reads:
  **MD5** from md5sum.txt for 4.20 (its registration hashes the file it finds with MD5), **SHA-512** from
  sha512sum.txt for 4.22 (PR 11134: plain 128 hex digits, no ``{SHA-512}`` prefix; registration compares it
  with ``DigestHelper``'s SHA-512 of the file). Both lists are always written and list every published file.
- ``version``: the template version for 4.20; four-part for 4.22 (``4.22.0.0``, as templateConfig.sh writes
  the project version).
- KVM sections are ``kvm-<arch>`` for every architecture (4.20.1 and later look up ``<hypervisor>-<arch>``
  and have no fallback for KVM), so an aarch64 qcow2 is ``[kvm-aarch64]`` (the architecture word from
  :data:`systemvm.naming.ARCH_OF`); a 4.20 template also gets ``[kvm]`` with the x86_64 values, which 4.20.0
  reads. The other hypervisors are ``vmware``, ``xenserver``, ``hyperv`` (the ``-hyperv.vhd.zip``, whose
  absence fails an upgrade even where Hyper-V is unused: CloudStack issue 12077) and ``lxc`` (the KVM file)
  for x86_64, and ``<hypervisor>-<arch>`` for another architecture (CloudStack publishes none; its
  registration falls back to ``<hypervisor>`` for x86_64 only). ``guestos`` is ``Other Linux (64-bit)`` for
  VMware and XenServer and ``Debian GNU/Linux 12 (64-bit)`` otherwise (32-bit for i386).
- A section is written only when its file is listed: a section whose file is absent fails CloudStack's
  registration (issue 12077). No ``ovm3`` section: we build no OVM3 artifact (and 4.22 no longer reads one).
"""

from __future__ import annotations

import bz2
import configparser
import functools
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

from systemvm import naming
from systemvm.atomic import atomic_path
from systemvm.defaults import DOWNLOAD_BASE_URL
from systemvm.errors import ToolFailed, UserError, ini_problem
from systemvm.hosttools import require_tools
from systemvm.profile import CloudStackProfile, profile_for

SHA512_FILE = "sha512sum.txt"
MD5_FILE = "md5sum.txt"
METADATA_FILE = "metadata.ini"

# format -> the hypervisor word of its metadata.ini section
HYPERVISOR_OF = {"qcow2": "kvm", "ova": "vmware", "vhd": "xenserver", "hyperv": "hyperv"}
SECTION_ORDER = ("kvm", "vmware", "xenserver", "hyperv", "lxc")
# The architecture CloudStack publishes every hypervisor's template for; the others get KVM-style sections.
MAIN_ARCH = "x86_64"


# ------------------------------------------------------------------------------------------------ bzip2


def _bzip2_probe_sample() -> bytes:
    # compressible but not trivial: 3 MiB, more than one 900 kB bzip2 block
    return b"".join(hashlib.sha256(str(i // 7).encode()).digest() * 3 for i in range(33000))


@functools.lru_cache(maxsize=1)
def lbzip2_usable() -> bool:
    """lbzip2 is used when present, deterministic across thread counts, and readable by bunzip2 and bz2."""
    if shutil.which("lbzip2") is None or shutil.which("bunzip2") is None:
        return False
    sample = _bzip2_probe_sample()
    outputs = []
    for threads in ("1", "2"):
        run = subprocess.run(["lbzip2", "-9", "-n", threads, "-c"], input=sample, capture_output=True)
        if run.returncode != 0:
            return False
        outputs.append(run.stdout)
    if outputs[0] != outputs[1]:
        return False
    plain = subprocess.run(["bunzip2", "-c"], input=outputs[0], capture_output=True)
    return plain.returncode == 0 and plain.stdout == sample and bz2.decompress(outputs[0]) == sample


def bzip2_command(parallel: bool | None = None) -> list[str]:
    use_parallel = lbzip2_usable() if parallel is None else parallel
    if use_parallel:
        return ["lbzip2", "-9", "-c"]
    require_tools("bzip2")
    return ["bzip2", "-9", "-c"]


def compress_bz2(src: Path, dst: Path, *, parallel: bool | None = None) -> None:
    """bzip2 ``src`` into ``dst`` atomically (no name or time is stored, so output is deterministic)."""
    cmd = bzip2_command(parallel)
    with atomic_path(dst) as tmp, open(src, "rb") as fin, open(tmp, "wb") as fout:
        run = subprocess.run(cmd, stdin=fin, stdout=fout, stderr=subprocess.PIPE, text=True)
        if run.returncode != 0:
            message = (run.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise ToolFailed(f"{cmd[0]} failed on {src.name}: {message}; check free space")


# ------------------------------------------------------------------------------------------- checksums


def file_digests(path: Path) -> dict[str, str | int]:
    """sha512, md5 and size of a file in one read."""
    sha512, md5, size = hashlib.sha512(), hashlib.md5(), 0
    with open(path, "rb") as f:
        while chunk := f.read(4 * 2**20):
            sha512.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return {"sha512": sha512.hexdigest(), "md5": md5.hexdigest(), "size": size}


def parse_checksums(path: Path) -> dict[str, str]:
    """coreutils ``<hex>  <name>`` lines (``*name`` for binary mode accepted) -> {name: hex}."""
    entries: dict[str, str] = {}
    if not Path(path).is_file():
        return entries
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        match = re.fullmatch(r"([0-9a-fA-F]+) [ *](.+)", line)
        if not match:
            raise UserError(f"{path}:{number}: not a checksum line: fix or delete the file")
        entries[match.group(2)] = match.group(1).lower()
    return entries


def render_checksums(entries: dict[str, str]) -> str:
    return "".join(f"{entries[name]}  {name}\n" for name in sorted(entries))


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def update_checksums(directory: Path, digests: dict[str, dict]) -> None:
    """Merge ``{filename: {"sha512", "md5"}}`` into sha512sum.txt and md5sum.txt; drop vanished files."""
    directory = Path(directory)
    for list_name, key in ((SHA512_FILE, "sha512"), (MD5_FILE, "md5")):
        entries = parse_checksums(directory / list_name)
        entries = {name: value for name, value in entries.items() if (directory / name).is_file()}
        for name, info in digests.items():
            entries[name] = str(info[key])
        write_text(directory / list_name, render_checksums(entries))


# -------------------------------------------------------------------------------------------- metadata


def guest_os(hypervisor: str, arch: str) -> str:
    bits = "32" if arch == "i386" else "64"
    if hypervisor in ("vmware", "xenserver"):
        return f"Other Linux ({bits}-bit)"
    return f"Debian GNU/Linux 12 ({bits}-bit)"


def section_names(hypervisor: str, arch: str, profile: CloudStackProfile) -> tuple[str, ...]:
    """metadata.ini's section(s) for one artifact (see the module docstring)."""
    if hypervisor == "kvm":
        plain = ("kvm",) if arch == MAIN_ARCH and profile.kvm_plain_section else ()
        return (*plain, f"kvm-{arch}")
    return (hypervisor,) if arch == MAIN_ARCH else (f"{hypervisor}-{arch}",)


def default_base_url(version: str) -> str:
    major_minor = ".".join(version.split(".")[:2])
    return f"{DOWNLOAD_BASE_URL}/{major_minor}"


def _arch_order() -> list[str]:
    """x86_64 first (CloudStack's main architecture), then the others in naming.ARCH_OF's order."""
    archs = list(dict.fromkeys(naming.ARCH_OF.values()))
    return sorted(archs, key=lambda arch: arch != MAIN_ARCH)


def render_metadata(
    version: str, checksums: dict[str, str], base_url: str, profile: CloudStackProfile | None = None
) -> str:
    """metadata.ini text for the artifacts of ``version`` listed in ``checksums`` ({filename: hex digest in
    the line's checksum algorithm, as its checksum list holds it})."""
    profile = profile or profile_for(version)
    base = base_url.rstrip("/")
    found: dict[tuple[str, str], str] = {}
    for name in checksums:
        parsed = naming.parse_export_name(name)
        if parsed is None or parsed[0] != version:
            continue
        _, arch, fmt = parsed
        if fmt not in naming.PUBLISHED_FORMATS.get(naming.flavour_of_arch(arch) or "", naming.FORMATS):
            continue  # aarch64 is published for KVM only: no section for another file of it
        hypervisor = HYPERVISOR_OF[fmt]
        found[(arch, hypervisor)] = name
        if hypervisor == "kvm" and arch == MAIN_ARCH:
            found[(arch, "lxc")] = name  # CloudStack serves LXC from the KVM qcow2
    lines = [
        "",
        "[default]",
        f"version = {profile.metadata_version(version)}",
        f"downloadrepository = {base}/",
        "",
    ]
    for arch in _arch_order():
        for hypervisor in SECTION_ORDER:
            name = found.get((arch, hypervisor))  # type: ignore[assignment]  # None is skipped just below
            if name is None:
                continue
            for section in section_names(hypervisor, arch, profile):
                lines += [
                    f"[{section}]",
                    f"templatename = systemvm-{hypervisor}-{version}-{arch}",
                    f"checksum = {checksums[name]}",
                    f"downloadurl = {base}/{name}",
                    f"filename = {name}",
                    f"arch = {arch}",
                    f"guestos = {guest_os(hypervisor, arch)}",
                    "",
                ]
    return "\n".join(lines) + "\n"


def write_metadata(directory: Path, version: str, base_url: str) -> None:
    """metadata.ini from the checksum list the version's CloudStack line reads (md5sum.txt, sha512sum.txt)."""
    profile = profile_for(version)
    checksums = parse_checksums(Path(directory) / profile.checksum_list)
    write_text(Path(directory) / METADATA_FILE, render_metadata(version, checksums, base_url, profile))


def parse_metadata(path: Path) -> dict[str, dict[str, str]]:
    """metadata.ini -> {section: {key: value}} (as CloudStack's ini reader sees it)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(Path(path).read_text())
    except configparser.Error as exc:
        raise UserError(f"{path}: {ini_problem(exc)}: regenerate it") from None
    return {section: dict(parser.items(section)) for section in parser.sections()}


def refresh_listing(directory: Path, version: str, digests: dict[str, dict], base_url: str) -> None:
    """Update the checksum lists with ``digests``, rewrite metadata.ini from them, then list it too.

    metadata.ini names only the hypervisor artifacts, so listing it (and the manifests, SBOMs and
    reports) in the checksum lists does not change it, and no name of ours contains the
    ``<version>-<arch>-<hypervisor>`` that CloudStack's templateConfig.sh looks for in them.
    """
    update_checksums(directory, digests)
    write_metadata(directory, version, base_url)
    update_checksums(directory, {METADATA_FILE: file_digests(Path(directory) / METADATA_FILE)})


def list_files(directory: Path, paths: list[Path]) -> None:
    """Add ``paths`` (files in ``directory``: a manifest, an SBOM, a report) to both checksum lists."""
    update_checksums(directory, {Path(p).name: file_digests(Path(p)) for p in paths})


# Top-level files of a release directory that are not published: the checksum lists themselves and the
# raw disks (the 5 GiB build output the exports are made from; CloudStack publishes none).
NOT_PUBLISHED = (SHA512_FILE, MD5_FILE, "*.raw")


def published_files(directory: Path) -> list[str]:
    """Every file placed beside the artifacts that a user downloads, so each must be checksummed."""
    return sorted(
        path.name
        for path in Path(directory).iterdir()
        if path.is_file()
        and not path.name.startswith(".")  # a temporary file of a write in progress
        and not any(path.match(pattern) for pattern in NOT_PUBLISHED)
    )


def unlisted_files(directory: Path) -> list[str]:
    """Published files missing from sha512sum.txt or md5sum.txt; empty when every one is listed."""
    listed = [set(parse_checksums(Path(directory) / name)) for name in (SHA512_FILE, MD5_FILE)]
    return [name for name in published_files(directory) if not all(name in names for names in listed)]


def verify_listing(directory: Path) -> list[str]:
    """Names in sha512sum.txt or md5sum.txt whose file is missing or differs; empty when all match."""
    lists = {
        key: parse_checksums(Path(directory) / name)
        for name, key in ((SHA512_FILE, "sha512"), (MD5_FILE, "md5"))
    }
    bad = []
    for name in sorted(set(lists["sha512"]) | set(lists["md5"])):
        path = Path(directory) / name
        digests = file_digests(path) if path.is_file() else {}
        if any(name in listed and digests.get(key) != listed[name] for key, listed in lists.items()):
            bad.append(name)
    return bad


__all__ = [
    "compress_bz2",
    "file_digests",
    "lbzip2_usable",
    "list_files",
    "published_files",
    "unlisted_files",
    "parse_checksums",
    "parse_metadata",
    "refresh_listing",
    "render_metadata",
    "update_checksums",
    "verify_listing",
    "write_metadata",
]
