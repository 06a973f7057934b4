"""Seed CloudStack secondary storage with a System VM template: ``cloud-install-sys-tmplt``, done right.

Layout, as the management server and the SSVM expect it (``TemplateLocation``)::

    <mount>/template/tmpl/1/<id>/<uuid>.<ext>
    <mount>/template/tmpl/1/<id>/template.properties
    <mount>/template/tmpl/1/<id>/*.ovf *.mf *.vmdk      (VMware: the OVA unpacked in place)

Order of work, so that every failure leaves secondary storage as it was: check the arguments, find the
template id (database), refuse an occupied template directory unless forced, check free space, stream the
artifact (decompressing on the fly, hashing the bytes as they arrive) into a temporary directory beside the
destination, compare the checksum, read the virtual size from the image, write template.properties, update
the database row inside a transaction, swap the directory into place (``renameat2(RENAME_EXCHANGE)``, so
``-F`` replaces the old one atomically), commit, then remove the old directory.

The template file's uuid is derived from the hypervisor, the template id and the artifact's sha512, so seeding
the same artifact twice gives the same directory, byte for byte. CloudStack's script draws a random uuid.

When the artifact's version and architecture are known (its name, else its metadata.ini section) the database
side follows that version's CloudStack line (:mod:`systemvm.profile`) as its registration leaves a template:
the id is the newest live SYSTEM template named ``systemvm-<hypervisor>-<version>-<arch>`` of that
architecture, else the newest of the hypervisor and architecture (``vm_template.arch``, CloudStack 4.20 and
later), so an x86_64 template never lands in an aarch64 row; and ``checksum`` is set beside ``uuid`` and
``url``: the MD5 for 4.20, ``{SHA-512}`` and the hex for 4.22. No copy of 4.22's ``cloud-install-sys-tmplt``
was found to read (the 4.19/4.20 one picks the newest id of the hypervisor and writes no checksum); these
rules are ``SystemVmTemplateRegistration.java``'s (main, d4m14ndx/cloudstack@0bd0bc22). An artifact of no
known line is seeded as before: newest id of the hypervisor, ``uuid`` and ``url`` only.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pymysql.connections import Connection

from systemvm import runs
from systemvm.errors import UserError
from systemvm.export import detect
from systemvm.hosttools import require_tools
from systemvm.progress import Meter, human_bytes, phase, say
from systemvm.seed.db import DB_PROPERTIES, DbConfig, connect, system_template_for, update_template
from systemvm.seed.source import (
    ArtifactInfo,
    Expected,
    FileSource,
    HttpSource,
    artifact_info,
    expected_checksum,
    open_source,
)
from systemvm.seed.stream import Decompressor, SparseWriter, compression_of

# hypervisor -> extension CloudStack uses for it (cloud-install-sys-tmplt / setup-sysvm-tmplt)
EXTENSION_OF = {"kvm": "qcow2", "xenserver": "vhd", "vmware": "ova", "hyperv": "vhd", "lxc": "qcow2"}
DESCRIPTION = "SystemVM Template"  # what cloud-install-sys-tmplt passes to createtmplt.sh -d
SYSTEM_ACCOUNT = 1  # template/tmpl/<account id>: system templates belong to account 1
UUID_NAMESPACE = uuidlib.UUID("6f1d8a52-3b7e-5c1e-9a43-2f0e5b9d7c11")
MARGIN = 1 << 20  # bytes kept free beyond the estimate (template.properties, directory entries)


@dataclasses.dataclass
class SeedRequest:
    mount: Path | None
    hypervisor: str
    file: str | None = None
    url: str | None = None
    template_id: int | None = None
    force: bool = False
    extension: str | None = None
    sha512: str | None = None
    verify: bool = True  # False only with --no-checksum
    use_db: bool | None = None  # None: when needed (no -t) or asked (db options / db.properties present)
    db: DbConfig | None = None
    db_properties: Path | None = DB_PROPERTIES
    nfs: str | None = None
    template_uuid: str | None = None
    progress: bool = True
    retries: int = 5
    retry_backoff: float = 1.0


@dataclasses.dataclass
class SeedResult:
    template_id: int
    uuid: str
    directory: Path
    filename: str
    properties: list[tuple[str, str]]
    sha512: str
    size: int
    virtual_size: int
    database_updated: bool
    resumes: int = 0
    md5: str = ""
    arch: str | None = None
    cloudstack_line: str | None = None
    stored_checksum: str | None = None  # what vm_template.checksum was set to (None: left alone)


def extension_for(hypervisor: str, extension: str | None = None) -> str:
    if hypervisor not in EXTENSION_OF:
        raise UserError(f"unknown hypervisor '{hypervisor}': use -h with one of {', '.join(EXTENSION_OF)}")
    ext = extension or EXTENSION_OF[hypervisor]
    if not re.fullmatch(r"[A-Za-z0-9]+", ext):
        raise UserError(f"extension '{ext}' must be letters and digits only: e.g. -e qcow2")
    return ext


def template_dir(mount: Path, template_id: int) -> Path:
    return Path(mount) / "template" / "tmpl" / str(SYSTEM_ACCOUNT) / str(template_id)


def template_uuid(hypervisor: str, template_id: int, sha512: str) -> str:
    return str(uuidlib.uuid5(UUID_NAMESPACE, f"{hypervisor}/{template_id}/{sha512}"))


def template_properties(
    *, ext: str, filename: str, template_id: int, size: int, virtual_size: int, checksum: str
) -> list[tuple[str, str]]:
    """template.properties in the order CloudStack writes it: createtmplt.sh's four lines, then the eight
    cloud-install-sys-tmplt appends; ``checksum`` (sha512 of the artifact as published) last."""
    return [
        ("filename", filename),
        ("description", DESCRIPTION),
        ("hvm", "false"),
        ("size", str(size)),
        (ext, "true"),
        ("id", str(template_id)),
        ("public", "true"),
        (f"{ext}.filename", filename),
        ("uniquename", f"routing-{template_id}"),
        (f"{ext}.virtualsize", str(virtual_size)),
        ("virtualsize", str(virtual_size)),
        (f"{ext}.size", str(size)),
        ("checksum", checksum),
    ]


def render_properties(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"{key}={value}\n" for key, value in pairs)


def parse_properties(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


# ----------------------------------------------------------------------------------------- image content


def image_kind(path: Path) -> str:
    """``qcow2``, ``vhd`` (dynamic or fixed), ``ova`` (a tar) or ``raw``, from the file's bytes."""
    kind = detect.kind_of(path)
    return kind if kind in ("qcow2", "vhd", "ova") else "raw"


FORMAT_OF_EXT = {"qcow2": "qcow2", "vhd": "vhd", "ova": "ova", "raw": "raw", "img": "raw"}


def check_kind(path: Path, ext: str, source_name: str) -> str:
    kind = image_kind(path)
    wanted = FORMAT_OF_EXT.get(ext.lower())
    if wanted is not None and kind != wanted:
        raise UserError(
            f"{source_name} holds a {kind} image, but this hypervisor's templates are {ext}: "
            f"give the {ext} artifact (or -e {kind} if that is really wanted)"
        )
    return kind


def virtual_size(path: Path, kind: str) -> int:
    """The disk size the image presents, read from the image itself."""
    if kind == "qcow2":
        from systemvm.export.formats.qcow2 import qcow2_virtual_size

        return int(qcow2_virtual_size(path))
    if kind == "vhd":
        from systemvm.export.formats.vhd import vhd_virtual_size

        return int(vhd_virtual_size(path))
    if kind == "ova":
        from systemvm.export.formats.ova import ova_virtual_size

        return int(ova_virtual_size(path))
    return path.stat().st_size


def unpack_ova(ova: Path, into: Path, label: str | None = None) -> list[str]:
    """Unpack the OVA's members (plain file names only) beside it, as CloudStack's ``tar xf``. ``label``
    names the OVA in errors (the user's file, not the staged copy's uuid name)."""
    label = label or ova.name
    names: list[str] = []
    try:
        with tarfile.open(ova, "r:") as archive:
            for member in archive:
                name = member.name
                if not member.isfile() or "/" in name or name in (".", "..") or name.startswith("."):
                    raise UserError(f"{label} member '{name}' is not a plain file name: the OVA is unsafe")
                if (into / name).exists():
                    raise UserError(f"{label} member '{name}' clashes with another file: repack the OVA")
                source = archive.extractfile(member)
                assert source is not None
                with source, open(into / name, "wb") as target:
                    shutil.copyfileobj(source, target, 1 << 20)
                    target.flush()
                    os.fsync(target.fileno())
                os.chmod(into / name, 0o644)
                names.append(name)
    except (tarfile.TarError, EOFError) as exc:
        raise UserError(
            f"{label} is cut short or not a readable OVA (tar: {exc}): fetch or export it again"
        ) from None
    if not any(n.lower().endswith(".ovf") for n in names):
        raise UserError(f"{label} holds no .ovf descriptor: give a VMware OVA")
    return names


# ------------------------------------------------------------------------------------ directory handling

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the filesystem cannot (e.g. NFS)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def _parents_made(directory: Path) -> Iterator[None]:
    """Create ``directory`` and missing parents; remove the ones made here if the block fails."""
    missing: list[Path] = []
    probe = directory
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    made: list[Path] = []
    try:
        for path in reversed(missing):
            try:
                path.mkdir(mode=0o755)
            except OSError as exc:
                raise UserError(
                    f"failed to write to {path.parent} ({exc.strerror}): "
                    "is secondary storage mounted and writable?"
                ) from None
            made.append(path)
        yield
    except BaseException:
        for path in reversed(made):
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


class _Installed:
    """How a staged directory went into place, so it can be undone until the database commit."""

    def __init__(self, staged: Path, dest: Path) -> None:
        self.staged, self.dest, self.old, self.mode = staged, dest, None, ""
        if not dest.exists():
            os.rename(staged, dest)
            self.mode = "new"
        elif _exchange(staged, dest):
            self.old, self.mode = staged, "exchanged"  # the staged name now holds the old directory
        else:  # no atomic swap here (NFS): move the old one aside, then the new one in
            aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            aside.rmdir()
            os.rename(dest, aside)
            try:
                os.rename(staged, dest)
            except BaseException:
                os.rename(aside, dest)
                raise
            self.old, self.mode = aside, "aside"

    def undo(self) -> None:
        if self.mode == "new":
            os.rename(self.dest, self.staged)
        elif self.mode == "exchanged":
            _exchange(self.staged, self.dest)
        elif self.mode == "aside" and self.old is not None:
            os.rename(self.dest, self.staged)
            os.rename(self.old, self.dest)
        self.mode = "undone"

    def remove_old(self) -> None:
        if self.old is not None and self.mode in ("exchanged", "aside"):
            shutil.rmtree(self.old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------ stale staging

STAGING_MARK = ".seed-"
_STAGING = re.compile(r"^\.\d+\.seed-[A-Za-z0-9_]{8}$")  # .<template id>.seed-<mkdtemp's 8 characters>
STALE_IDLE_SECONDS = 3600  # a staging directory whose owner cannot be asked: nothing in it changed this long


def _idle_seconds(directory: Path) -> float:
    newest = directory.lstat().st_mtime
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            newest = max(newest, entry.lstat().st_mtime)
    return time.time() - newest


def sweep_staging(parent: Path) -> list[str]:
    """Remove the staging directories of seeds that did not finish (killed, or their host lost), found by
    the name this module gives them (``.<id>.seed-XXXXXXXX``) in ``parent`` (``template/tmpl/1``).

    Secondary storage is shared by every management server, so only our staging directories are looked
    at, and each only when its seed is over: its owner record names a process of this host that is gone,
    or it names another host (or none: a seed of an older version, or one killed before it wrote the
    record) and nothing in it changed for an hour, a download in progress writing all the time.
    """
    removed = []
    for entry in sorted(parent.iterdir()) if parent.is_dir() else []:
        if not _STAGING.match(entry.name) or entry.is_symlink() or not entry.is_dir():
            continue
        owner = runs.read_owner(entry)
        alive = runs.owner_alive(owner) if owner is not None else None
        if alive is True:
            continue
        if alive is None and _idle_seconds(entry) < STALE_IDLE_SECONDS:
            continue
        size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file() and not f.is_symlink())
        shutil.rmtree(entry, ignore_errors=True)
        who = f"pid {owner['pid']} on {owner['host']}" if owner else "no owner record"
        removed.append(f"{entry}: staging of a seed that did not finish ({who}, {human_bytes(size)})")
    return removed


# ----------------------------------------------------------------------------------------------- NFS

_EXPORT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(/\S*)$")


def parse_nfs_export(export: str) -> tuple[str, str]:
    match = _EXPORT.match(export.strip())
    if not match:
        raise UserError(
            f"--nfs '{export}' is not server:/export: give e.g. --nfs nfs1.example.org:/export/secondary"
        )
    server, _, path = export.strip().rpartition(":")
    return server, path


@contextlib.contextmanager
def nfs_mounted(export: str, mount_point: Path | None = None) -> Iterator[Path]:
    """Mount ``server:/export`` (on ``mount_point`` or a fresh temporary directory), unmount afterwards."""
    parse_nfs_export(export)
    require_tools("mount.nfs")
    made = mount_point is None
    point = Path(tempfile.mkdtemp(prefix="systemvm-seed-nfs-")) if made else Path(str(mount_point))
    try:
        if not made and (not point.is_dir() or any(point.iterdir())):
            raise UserError(f"mount point {point} must be an existing empty directory: create it or omit -m")
        done = subprocess.run(["mount", "-t", "nfs", export, str(point)], capture_output=True, text=True)
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["mount failed"])[-1]
            raise UserError(
                f"cannot mount {export} on {point} ({reason}): check the export and its access list"
            )
        try:
            yield point
        finally:
            undone = subprocess.run(["umount", str(point)], capture_output=True, text=True)
            if undone.returncode != 0:
                say(f"warning: could not unmount {point}: {undone.stderr.strip()}; run 'umount {point}'")
                made = False  # leave the directory for the admin
    finally:
        if made:
            with contextlib.suppress(OSError):
                point.rmdir()


# --------------------------------------------------------------------------------------------- seeding


def _wants_db(request: SeedRequest) -> bool:
    if request.use_db is not None:
        return request.use_db
    if request.template_id is None or request.db is not None:
        return True
    return request.db_properties is not None and request.db_properties.is_file()


@contextlib.contextmanager
def _progress(total: int | None, name: str, enabled: bool) -> Iterator[Meter | None]:
    """Bytes of the artifact copied of its size (:class:`systemvm.progress.Meter`: rewritten in place on
    a terminal, a line per tenth or per 15 s elsewhere); ``enabled=False`` (``--quiet``) shows none."""
    meter = Meter(f"copy {name}", total) if enabled else None
    try:
        yield meter
    finally:
        if meter is not None:
            meter.close()


def _free_space_needed(source: FileSource | HttpSource, ext: str) -> int:
    """A floor for what the template takes: the artifact's size (twice for an OVA, unpacked beside itself)."""
    base = source.size or 0
    return base * (2 if ext == "ova" else 1) + MARGIN


def _check_free_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise UserError(
            f"insufficient free space in {directory}: need at least {human_bytes(needed)}, "
            f"have {human_bytes(free)}; "
            "free some space on secondary storage"
        )


def _stream_to(
    source: FileSource | HttpSource, target: Path, expected: Expected | None, progress: bool
) -> tuple[str, str, bool]:
    """Copy the artifact into ``target``, decompressing on the fly; return (sha512 hex, md5 hex, digest ok)
    of the artifact as published (compressed): a 4.20 registration stores its MD5."""
    import hashlib

    sha512 = hashlib.sha512()
    md5 = hashlib.md5()
    other = md5
    decompressor: Decompressor | None = None
    with open(target, "wb") as handle, _progress(source.size, source.name, progress) as meter:
        writer = SparseWriter(handle)
        for chunk in source.chunks():
            sha512.update(chunk)
            md5.update(chunk)
            if meter is not None:
                meter.advance(len(chunk))
            if decompressor is None:
                decompressor = Decompressor(compression_of(chunk[:8]))
            for out in decompressor.feed(chunk):
                writer.write(out)
        if decompressor is None:
            raise UserError(f"{source.display} is empty: give the exported template artifact")
        for out in decompressor.finish():
            writer.write(out)
        writer.close()
    digest = sha512.hexdigest()
    if expected is None:
        return digest, other.hexdigest(), True
    actual = {"sha512": digest, "md5": other.hexdigest()}[expected.algorithm]
    return digest, other.hexdigest(), actual == expected.hexdigest


def seed(request: SeedRequest) -> SeedResult:
    """Seed one template; see the module docstring for the order of work."""
    ext = extension_for(request.hypervisor, request.extension)
    if request.file and request.url:
        raise UserError("give either -f FILE or -u URL, not both")
    if not request.file and not request.url:
        raise UserError("give -f FILE or -u URL: the template to seed")
    if request.template_id is not None and request.template_id <= 0:
        raise UserError(f"template id {request.template_id} must be a positive number: check -t")
    if request.nfs:
        parse_nfs_export(request.nfs)
        with nfs_mounted(request.nfs, request.mount) as point:
            return _seed_into(request, point, ext)
    if request.mount is None:
        raise UserError("give -m <secondary storage mount point> or --nfs server:/export")
    mount = Path(str(request.mount).rstrip("/") or "/")
    if not mount.is_dir():
        raise UserError(f"mount point {mount} doesn't exist: mount secondary storage there or give --nfs")
    return _seed_into(request, mount, ext)


def _seed_into(request: SeedRequest, mount: Path, ext: str) -> SeedResult:
    use_db = _wants_db(request)
    if not use_db and request.template_id is None:
        raise UserError("without the database the template id is unknown: give -t ID")
    db_config = request.db
    if use_db and db_config is None:
        from systemvm.seed.db import db_config as make_config

        db_config = make_config(properties=request.db_properties)

    with contextlib.ExitStack() as stack:
        connection = stack.enter_context(connect(db_config)) if use_db and db_config else None
        source = open_source(
            request.file, request.url, retries=request.retries, backoff=request.retry_backoff
        )
        info = artifact_info(source)
        template_id = request.template_id
        if template_id is None:
            if connection is None:
                raise UserError("no database connection to look up the template id: give -t or db settings")
            name = info.template_name(request.hypervisor)
            template_id = system_template_for(connection, request.hypervisor, info.arch, name)
            which = f"{name} (or the newest {info.arch} one)" if name else "newest SYSTEM template"
            say(f"    template id {template_id}: {which} for {request.hypervisor}")
        dest = template_dir(mount, template_id)
        if dest.exists() and any(dest.iterdir()) and not request.force:
            raise UserError(
                f"data already exists at destination {dest}: use -F to replace it, or -t to seed another "
                "template id (when upgrading, give the new template's id)"
            )
        expected = expected_checksum(source, request.sha512)
        if expected is None and request.verify:
            raise UserError(
                f"no checksum for {source.name}: put sha512sum.txt or metadata.ini next to it, "
                "give --sha512 HEX, or pass --no-checksum to seed it unchecked"
            )
        stack.enter_context(_parents_made(dest.parent))
        for line in sweep_staging(dest.parent):
            say(f"    removed {line}")
        _check_free_space(dest.parent, _free_space_needed(source, ext))
        staged = Path(tempfile.mkdtemp(prefix=f".{template_id}{STAGING_MARK}", dir=dest.parent))
        try:
            runs.write_owner(staged)  # a seed killed from here on leaves a directory the next seed removes
            result = _stage_and_install(
                request, source, expected, staged, dest, ext, template_id, connection, info
            )
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UserError(
                    f"secondary storage {dest.parent} filled up while writing the template: free some space "
                    "and run the command again (nothing was changed)"
                ) from None
            raise
        finally:
            if staged.exists():
                shutil.rmtree(staged, ignore_errors=True)
        return result
    raise AssertionError("unreachable")


def _stage_and_install(
    request: SeedRequest,
    source: FileSource | HttpSource,
    expected: Expected | None,
    staged: Path,
    dest: Path,
    ext: str,
    template_id: int,
    connection: Connection | None,
    info: ArtifactInfo,
) -> SeedResult:
    part = staged / "image.part"
    with phase(f"copy {source.name} into secondary storage"):
        sha512, md5, ok = _stream_to(source, part, expected, request.progress)
    if not ok:
        assert expected is not None
        raise UserError(
            f"checksum mismatch for {source.name}: {expected.algorithm} is not the one in {expected.origin}; "
            "the download is corrupt or the checksum list is stale: fetch both again (nothing was written)"
        )
    kind = check_kind(part, ext, source.name)
    uuid = request.template_uuid or template_uuid(request.hypervisor, template_id, sha512)
    filename = f"{uuid}.{ext}"
    image = staged / filename
    os.rename(part, image)
    os.chmod(image, 0o644)
    if kind == "ova":
        with phase(f"unpack {source.name}"):
            unpack_ova(image, staged, source.name)
    try:
        vsize = virtual_size(image, kind)
    except UserError as exc:  # name the user's file, not the staged copy
        raise UserError(str(exc).replace(str(image), source.name).replace(image.name, source.name)) from None
    size = image.stat().st_size
    properties = template_properties(
        ext=ext, filename=filename, template_id=template_id, size=size, virtual_size=vsize, checksum=sha512
    )
    props = staged / "template.properties"
    with open(props, "w") as handle:
        handle.write(render_properties(properties))
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(props, 0o644)
    (staged / runs.OWNER_FILE).unlink()  # the template directory holds CloudStack's files only
    os.chmod(staged, 0o755)
    _fsync_dir(staged)

    line = info.profile
    stored = None
    if line is not None:
        stored = line.stored_checksum({"sha512": sha512, "md5": md5}[line.checksum])
    if connection is not None:
        update_template(connection, template_id, uuid, request.url, stored)
    installed = _Installed(staged, dest)
    try:
        if connection is not None:
            connection.commit()
    except BaseException:
        installed.undo()
        with contextlib.suppress(Exception):
            if connection is not None:
                connection.rollback()
        raise
    _fsync_dir(dest.parent)
    installed.remove_old()
    say(f"    seeded {dest} ({human_bytes(size)}, virtual size {human_bytes(vsize)})")
    return SeedResult(
        template_id=template_id,
        uuid=uuid,
        directory=dest,
        filename=filename,
        properties=properties,
        sha512=sha512,
        size=size,
        virtual_size=vsize,
        database_updated=connection is not None,
        resumes=getattr(source, "resumes", 0),
        md5=md5,
        arch=info.arch,
        cloudstack_line=line.line if line is not None else None,
        stored_checksum=stored if connection is not None else None,
    )
