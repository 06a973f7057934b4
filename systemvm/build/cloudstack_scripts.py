"""``invoke build --cloudstack-scripts PATH``: a given CloudStack version's scripts, baked into the image.

CloudStack's own template build rsyncs its ``systemvm/debian`` tree to ``/``, keeps the tarball as
``/usr/share/cloud/cloud-scripts.tgz`` and writes its digest (the digest only, as
``md5sum | awk '{print $1}'``; MD5 in 4.20, SHA-512 in 4.22: :mod:`systemvm.profile`) to
``/var/cache/cloud/cloud-scripts-signature`` (contract section 6). The version handshake of a management
server compares that signature with the digest of its own ``vms/cloud-scripts.tgz`` (section 4), so an
image baked with the very tarball a release ships shows no mismatch on its first boot.

The input is either that ``cloud-scripts.tgz`` or a ``cloudstack-common`` .deb, from which
``usr/share/cloudstack-common/vms/{cloud-scripts.tgz,agent.zip,patch-sysvms.sh}`` are read (and the package's
version from its control file). Everything is read and checked here, on the host, before diskimage-builder
starts: a bad input ends the build with one line and exit status 1, with nothing built. The
``systemvm-cloudstack-scripts`` element then installs the staged files inside the image.

The .deb is read in Python (``ar`` members, then ``data.tar.{gz,xz,bz2}`` with :mod:`tarfile`;
``data.tar.zst``, what Ubuntu's dpkg writes, through the ``zstd`` command the build already needs) rather
than with ``dpkg-deb``, which host-packages.txt does not list.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from systemvm.errors import UserError

ELEMENT = "systemvm-cloudstack-scripts"
ENV = "SYSTEMVM_CLOUDSTACK_SCRIPTS"  # the staged directory, read by the element's extra-data.d
VMS_DIR = "usr/share/cloudstack-common/vms"
TARBALL = "cloud-scripts.tgz"
AGENT = "agent.zip"
PATCH_SCRIPT = "patch-sysvms.sh"
DEB_FILES = (TARBALL, AGENT, PATCH_SCRIPT)
# Where the image keeps them (the element installs them there; the build reads the signature back)
IMAGE_DIR = "/usr/share/cloud"
SIGNATURE_PATH = "/var/cache/cloud/cloud-scripts-signature"
INFO_NAME = "cloudstack-scripts.json"
MEMBERS_NAME = "members.txt"  # the tarball's files and links, one relative path a line (the element reads it)
REPLACED_RECORD = "/usr/share/systemvm/build/cloudstack-scripts-replaced"  # image files the tree replaced
# CloudStack's boot units the bake enabled (then the image's own boot steps are disabled)
BOOT_UNITS_RECORD = "/usr/share/systemvm/build/cloudstack-boot-units"

FIX_TGZ = (
    "pass CloudStack's cloud-scripts.tgz (usr/share/cloudstack-common/vms/ of cloudstack-common) or that .deb"
)
AR_MAGIC = b"!<arch>\n"
GZIP_MAGIC = b"\x1f\x8b"


class ScriptsError(UserError):
    """A --cloudstack-scripts input that cannot be baked: one line, exit status 2 (the user's input),
    nothing built."""


@dataclass(frozen=True)
class CloudStackScripts:
    """What one build bakes in: the tarball, and from a .deb also agent.zip and patch-sysvms.sh."""

    source: str  # the file name given
    kind: str  # "tarball" or "deb"
    tarball: bytes
    files: int  # regular files in the tarball
    agent_zip: bytes | None = None
    patch_script: bytes | None = None
    package: str | None = None
    cloudstack_version: str | None = None
    deb_control: dict[str, str] = field(default_factory=dict)

    @property
    def md5(self) -> str:
        return hashlib.md5(self.tarball).hexdigest()

    def digest(self, algorithm: str) -> str:
        """The tarball's digest in ``algorithm`` (a hashlib name: the profile's ``scripts_digest``)."""
        return hashlib.new(algorithm, self.tarball).hexdigest()

    def manifest(self) -> dict[str, Any]:
        """What the build manifest records under ``cloudstack_scripts``."""
        record: dict[str, Any] = {
            "source": self.source,
            "kind": self.kind,
            "cloud_scripts_md5": self.md5,
            "cloud_scripts_sha512": self.digest("sha512"),
            "cloud_scripts_bytes": len(self.tarball),
            "cloud_scripts_files": self.files,
            "signature_path": SIGNATURE_PATH,
            "installed": [f"{IMAGE_DIR}/{TARBALL}"],
        }
        if self.kind == "deb":
            assert self.agent_zip is not None and self.patch_script is not None
            record.update(
                {
                    "package": self.package,
                    "cloudstack_version": self.cloudstack_version,
                    "agent_zip_md5": hashlib.md5(self.agent_zip).hexdigest(),
                    "patch_sysvms_md5": hashlib.md5(self.patch_script).hexdigest(),
                }
            )
            record["installed"] += [f"{IMAGE_DIR}/{AGENT}", f"{IMAGE_DIR}/{PATCH_SCRIPT}"]
        return record

    def stage(self, directory: Path) -> Path:
        """Write the files the element installs into ``directory`` (made here); return it."""
        directory.mkdir(parents=True)
        (directory / TARBALL).write_bytes(self.tarball)
        if self.agent_zip is not None:
            (directory / AGENT).write_bytes(self.agent_zip)
        if self.patch_script is not None:
            (directory / PATCH_SCRIPT).write_bytes(self.patch_script)
        (directory / INFO_NAME).write_text(json.dumps(self.manifest(), indent=2, sort_keys=True) + "\n")
        # Listed here: inside the chroot the staged directory is mounted read-only, so the element
        # cannot write a listing of its own next to the tarball.
        (directory / MEMBERS_NAME).write_text("".join(f"{name}\n" for name in member_paths(self.tarball)))
        return directory


def member_paths(data: bytes) -> list[str]:
    """The relative paths of a checked tarball's files and links (no directories), without ``./``."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        return [
            str(PurePosixPath(*[p for p in PurePosixPath(m.name).parts if p != "."]))
            for m in archive
            if not m.isdir()
        ]


def check_tarball(data: bytes, label: str) -> int:
    """Raise :class:`ScriptsError` unless ``data`` is a gzip tar that is safe to unpack over ``/``.

    Refused: absolute member names or ``..`` components (they would land outside the root), members below a
    symbolic link of the same archive (a path that escapes through it), hard links to absolute or ``..``
    targets, device nodes and FIFOs (never part of CloudStack's tree), and an archive with no regular file.
    Returns the number of regular files.
    """
    if not data.startswith(GZIP_MAGIC):
        raise ScriptsError(f"{label} is not a gzip-compressed tar (no gzip header): {FIX_TGZ}")
    files = 0
    links: set[PurePosixPath] = set()
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            for member in archive:
                path = PurePosixPath(member.name)
                where = f"{label} member {member.name!r}"
                if member.name.startswith("/") or path.is_absolute():
                    raise ScriptsError(
                        f"{where} has an absolute path: rebuild the tarball with paths relative to /"
                    )
                if ".." in path.parts:
                    raise ScriptsError(f"{where} has a '..' component: rebuild the tarball without it")
                if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
                    raise ScriptsError(f"{where} is a device node or FIFO: rebuild the tarball without it")
                clean = PurePosixPath(*[p for p in path.parts if p != "."])
                if any(parent in links for parent in clean.parents):
                    raise ScriptsError(
                        f"{where} lies below a symbolic link of the archive: rebuild it without"
                    )
                if member.islnk():
                    target = PurePosixPath(member.linkname)
                    if target.is_absolute() or ".." in target.parts:
                        raise ScriptsError(
                            f"{where} is a hard link to {member.linkname!r}: rebuild the tarball without it"
                        )
                if member.issym():
                    links.add(clean)
                if member.isfile():
                    files += 1
    except ScriptsError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise ScriptsError(f"{label} is not a readable gzip tar ({exc}): {FIX_TGZ}") from None
    if files == 0:
        raise ScriptsError(f"{label} holds no file: {FIX_TGZ}")
    return files


def ar_members(data: bytes, label: str) -> dict[str, bytes]:
    """The members of a common-format ``ar`` archive (what a .deb is), by name."""
    if not data.startswith(AR_MAGIC):
        raise ScriptsError(
            f"{label} is not a .deb (no ar header): pass cloudstack-common's .deb or {TARBALL}"
        )
    members: dict[str, bytes] = {}
    offset = len(AR_MAGIC)
    while offset < len(data):
        header = data[offset : offset + 60]
        if len(header) < 60 or header[58:60] != b"`\n":
            raise ScriptsError(f"{label} is a truncated or corrupt .deb (bad ar header): download it again")
        name = header[0:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise ScriptsError(f"{label} is a corrupt .deb (bad member size): download it again") from None
        start = offset + 60
        if start + size > len(data):
            raise ScriptsError(f"{label} is a truncated .deb (member {name} cut short): download it again")
        members[name] = data[start : start + size]
        offset = start + size + (size % 2)  # members are padded to an even offset
    return members


def _decompressed_tar(name: str, blob: bytes, label: str) -> tarfile.TarFile:
    if name.endswith(".zst"):
        done = subprocess.run(["zstd", "-dc"], input=blob, capture_output=True, check=False)
        if done.returncode != 0:
            raise ScriptsError(f"{label}: {name} does not decompress (zstd: {done.stderr.decode().strip()})")
        return tarfile.open(fileobj=io.BytesIO(done.stdout), mode="r:")
    return tarfile.open(fileobj=io.BytesIO(blob), mode="r:*")


def _tar_member(name: str, members: dict[str, bytes], label: str) -> str:
    found = [m for m in members if m == name or m.startswith(f"{name}.")]
    if not found:
        raise ScriptsError(f"{label} has no {name}.* member: it is not a Debian package; download it again")
    return found[0]


def read_deb(data: bytes, label: str) -> tuple[dict[str, str], dict[str, bytes]]:
    """(control fields, {file name: bytes}) of the ``vms/`` files of a cloudstack-common .deb."""
    members = ar_members(data, label)
    if members.get("debian-binary", b"").strip()[:1] != b"2":
        raise ScriptsError(
            f"{label} is not a Debian binary package (no debian-binary 2.x): download it again"
        )
    control: dict[str, str] = {}
    wanted = {f"{VMS_DIR}/{name}": name for name in DEB_FILES}
    found: dict[str, bytes] = {}
    try:
        control_name = _tar_member("control.tar", members, label)
        with _decompressed_tar(control_name, members[control_name], label) as tar:
            for member in tar:
                if PurePosixPath(member.name).name == "control" and member.isfile():
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    control = parse_control(extracted.read().decode("utf-8", "replace"))
        data_name = _tar_member("data.tar", members, label)
        with _decompressed_tar(data_name, members[data_name], label) as tar:
            for member in tar:
                path = str(
                    PurePosixPath(*[p for p in PurePosixPath(member.name).parts if p not in (".", "/")])
                )
                if path in wanted and member.isfile():
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    found[wanted[path]] = extracted.read()
    except ScriptsError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise ScriptsError(f"{label} is a corrupt .deb ({exc}): download it again") from None
    missing = [name for name in DEB_FILES if name not in found]
    if missing:
        package = control.get("Package", "this package")
        raise ScriptsError(
            f"{label} ({package}) has no {', '.join(f'{VMS_DIR}/{m}' for m in missing)}: "
            f"pass CloudStack's cloudstack-common .deb, or its {TARBALL} alone"
        )
    return control, found


def parse_control(text: str) -> dict[str, str]:
    """The single-line fields of a Debian control paragraph (continuation lines are dropped)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line[:1] in (" ", "\t") or ":" not in line:
            continue
        key, value = line.split(":", 1)
        fields[key.strip()] = value.strip()
    return fields


def cloudstack_version(debian_version: str) -> str:
    """CloudStack's version from a package version: ``4.20.0.0~bookworm1`` -> ``4.20.0.0`` (epoch and
    Debian revision cut)."""
    version = debian_version.split(":", 1)[-1]
    for separator in ("~", "-", "+"):
        version = version.split(separator, 1)[0]
    return version


def load(path: str | Path) -> CloudStackScripts:
    """Read and check one --cloudstack-scripts input; a :class:`ScriptsError` names the problem and fix."""
    given = Path(path)
    label = str(given)
    if not given.exists():
        raise ScriptsError(f"--cloudstack-scripts {label}: no such file: {FIX_TGZ}")
    if not given.is_file():
        raise ScriptsError(f"--cloudstack-scripts {label} is not a regular file: {FIX_TGZ}")
    try:
        data = given.read_bytes()
    except OSError as exc:
        raise ScriptsError(
            f"--cloudstack-scripts {label} cannot be read ({exc.strerror}): check its permissions"
        ) from None
    if data.startswith(AR_MAGIC):
        control, found = read_deb(data, label)
        inner = f"{label}:{VMS_DIR}/{TARBALL}"
        files = check_tarball(found[TARBALL], inner)
        try:
            with zipfile.ZipFile(io.BytesIO(found[AGENT])) as agent:
                bad = agent.testzip()
        except zipfile.BadZipFile as exc:
            raise ScriptsError(
                f"{label}:{VMS_DIR}/{AGENT} is not a zip ({exc}): download the .deb again"
            ) from None
        if bad is not None:
            raise ScriptsError(
                f"{label}:{VMS_DIR}/{AGENT} has a corrupt member {bad}: download the .deb again"
            )
        if not found[PATCH_SCRIPT].startswith(b"#!"):
            raise ScriptsError(f"{label}:{VMS_DIR}/{PATCH_SCRIPT} is not a script: download the .deb again")
        version = control.get("Version")
        return CloudStackScripts(
            source=given.name,
            kind="deb",
            tarball=found[TARBALL],
            files=files,
            agent_zip=found[AGENT],
            patch_script=found[PATCH_SCRIPT],
            package=control.get("Package"),
            cloudstack_version=cloudstack_version(version) if version else None,
            deb_control={k: control[k] for k in ("Package", "Version", "Architecture") if k in control},
        )
    files = check_tarball(data, label)
    return CloudStackScripts(source=given.name, kind="tarball", tarball=data, files=files)
