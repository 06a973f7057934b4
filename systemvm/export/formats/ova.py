"""OVA for VMware: OVF 1.x descriptor, manifest and streamOptimized VMDK in a deterministic ustar archive.

Layout (DSP0243 OVF 1.1, section 5.3: the descriptor first, then the manifest, then the files in the order
of the References): ``<name>.ovf``, ``<name>.mf`` (``SHA256(file)= hex`` lines), ``<name>-disk1.vmdk``.
The descriptor validates against DMTF's DSP8023 1.1.1 schema (``../shared/schemas/ovf`` beside the
repository, or ``$SYSTEMVM_OVF_SCHEMAS``), which :func:`check_ova` uses offline.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

from lxml import etree

from systemvm.atomic import atomic_path, require_free_space
from systemvm.errors import UserError
from systemvm.export.formats.vmdk import VmdkError, check_stream_vmdk, write_stream_vmdk

OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1"
RASD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
VMW_NS = "http://www.vmware.com/schema/ovf"
NSMAP = {None: OVF_NS, "ovf": OVF_NS, "rasd": RASD_NS, "vssd": VSSD_NS, "vmw": VMW_NS}
STREAM_OPTIMIZED = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
HARDWARE_VERSION = "vmx-13"
NETWORK_NAME = "VM Network"  # a logical network: the importer maps it to a real one
# flavour -> (CIM_OperatingSystem.OSType id, its description, VMware guest id known since vSphere 6.5)
OS_OF = {
    "amd64": (96, "Debian 64-Bit", "debian10_64Guest"),
    "i386": (95, "Debian", "debian10Guest"),
}
# CIM_ResourceAllocationSettingData.ResourceType values
RT_CPU, RT_MEMORY, RT_SCSI, RT_DISK = 3, 4, 6, 17
REMOTE_SCHEMAS = {
    "http://schemas.dmtf.org/wbem/wscim/1/common.xsd": "common.xsd",
    "http://www.w3.org/TR/2002/REC-xmldsig-core-20020212/xmldsig-core-schema.xsd": "xmldsig-core-schema.xsd",
    "http://www.w3.org/TR/2002/REC-xmlenc-core-20021210/xenc-schema.xsd": "xenc-schema.xsd",
    "http://www.w3.org/2001/xml.xsd": "xml.xsd",
}
MANIFEST_LINE = re.compile(r"^SHA256\((?P<name>[^()]+)\)= (?P<hex>[0-9a-f]{64})$")
USTAR_MAGIC = b"ustar\x0000"


class OvaError(UserError):
    """An OVA that breaks the rules an importer (vCenter, ovftool, CloudStack) relies on."""


def member_file(tar: tarfile.TarFile, member: tarfile.TarInfo) -> BinaryIO:
    """The content of an archive member as a binary file; a member that is not a regular file is refused."""
    handle = tar.extractfile(member)
    if handle is None:
        raise OvaError(f"{member.name} in the archive is not a regular file: export the OVA again")
    return cast(BinaryIO, handle)  # tarfile's ExFileObject, a BufferedReader


def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def default_schema_dir() -> Path:
    explicit = os.environ.get("SYSTEMVM_OVF_SCHEMAS")
    if explicit:
        return Path(explicit)
    return Path(__file__).resolve().parents[4] / "shared" / "schemas" / "ovf"


class _OfflineResolver(etree.Resolver):
    def __init__(self, schema_dir: Path) -> None:
        super().__init__()
        self.schema_dir = schema_dir

    # lxml-stubs declares resolve() without the context argument lxml passes, and no resolve_filename
    def resolve(self, url: str, pubid: str, context: Any) -> Any:  # type: ignore[override]
        if url in REMOTE_SCHEMAS:
            return self.resolve_filename(  # type: ignore[attr-defined]
                str(self.schema_dir / REMOTE_SCHEMAS[url]), context
            )
        if "://" in url and not url.startswith("file:"):
            raise OSError(f"refusing network access for schema {url}")
        return None


def _safe_parser(schema_dir: Path | None = None) -> etree.XMLParser:
    parser = etree.XMLParser(no_network=True, load_dtd=False, resolve_entities=False, huge_tree=False)
    if schema_dir is not None:
        parser.resolvers.add(_OfflineResolver(schema_dir))
    return parser


def ovf_schema(schema_dir: Path | None = None) -> etree.XMLSchema:
    """DSP8023 1.1.1 loaded offline from ``schema_dir`` (default: :func:`default_schema_dir`)."""
    return _load_schema(Path(schema_dir or default_schema_dir()).resolve())


@functools.lru_cache(maxsize=4)
def _load_schema(schema_dir: Path) -> etree.XMLSchema:
    entry = schema_dir / "dsp8023_1.1.1.xsd"
    if not entry.is_file():
        raise UserError(
            f"OVF schema {entry} not found: put DMTF's OVF schemas there "
            "or set SYSTEMVM_OVF_SCHEMAS to their folder"
        )
    return etree.XMLSchema(etree.parse(str(entry), _safe_parser(schema_dir)))


def schema_errors(document: etree._ElementTree, schema_dir: Path | None = None) -> list[str]:
    schema = ovf_schema(Path(schema_dir) if schema_dir else None)
    if schema.validate(document):
        return []
    # lxml-stubs declares _ErrorLog empty; lxml's error log is a sequence of _LogEntry
    entries: list[Any] = list(schema.error_log)  # type: ignore[call-overload]
    return [f"line {e.line}: {e.message}" for e in entries]


# ---------------------------------------------------------------------------------------------- writing


def build_ovf(
    *,
    name: str,
    flavour: str,
    disk_href: str,
    disk_size: int,
    capacity: int,
    cpus: int = 1,
    memory_mib: int = 512,
) -> bytes:
    """The OVF descriptor (UTF-8 bytes) for one VM with one streamOptimized disk and no NIC."""
    if flavour not in OS_OF:
        raise UserError(f"unknown flavour '{flavour}': use one of {', '.join(OS_OF)}")
    os_id, os_text, guest_id = OS_OF[flavour]
    ovf = functools.partial(_q, OVF_NS)
    rasd = functools.partial(_q, RASD_NS)
    vssd = functools.partial(_q, VSSD_NS)

    def sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
        element = etree.SubElement(parent, tag, {ovf(k): v for k, v in attrs.items()})
        if text is not None:
            element.text = text
        return element

    # None is the default namespace's key, as lxml documents it; lxml-stubs allows only str keys
    envelope = etree.Element(ovf("Envelope"), nsmap=NSMAP)  # type: ignore[arg-type]
    envelope.set(_q(VMW_NS, "buildId"), "systemvm-template")
    references = sub(envelope, ovf("References"))
    sub(references, ovf("File"), id="file1", href=disk_href, size=str(disk_size))

    disks = sub(envelope, ovf("DiskSection"))
    sub(disks, ovf("Info"), "Virtual disk information")
    # Units given explicitly although bytes are the default (DSP0243 8.3): some importers (govmomi's
    # simulator 0.24) read a capacity without units as KiB.
    sub(
        disks,
        ovf("Disk"),
        diskId="vmdisk1",
        fileRef="file1",
        capacity=str(capacity),
        capacityAllocationUnits="byte",
        format=STREAM_OPTIMIZED,
    )

    networks = sub(envelope, ovf("NetworkSection"))
    sub(networks, ovf("Info"), "Logical networks; the system VM's NICs are added at deployment per role")
    network = sub(networks, ovf("Network"), name=NETWORK_NAME)
    sub(network, ovf("Description"), f"The {NETWORK_NAME} network")

    system = sub(envelope, ovf("VirtualSystem"), id=name)
    sub(system, ovf("Info"), "Apache CloudStack system VM template")
    sub(system, ovf("Name"), name)
    os_section = sub(system, ovf("OperatingSystemSection"), id=str(os_id))
    os_section.set(_q(VMW_NS, "osType"), guest_id)
    sub(os_section, ovf("Info"), "The kind of installed guest operating system")
    sub(os_section, ovf("Description"), os_text)

    hardware = sub(system, ovf("VirtualHardwareSection"))
    sub(hardware, ovf("Info"), "Virtual hardware requirements")
    system_data = sub(hardware, ovf("System"))
    for tag, text in (
        ("ElementName", "Virtual Hardware Family"),
        ("InstanceID", "0"),
        ("VirtualSystemIdentifier", name),
        ("VirtualSystemType", HARDWARE_VERSION),
    ):
        sub(system_data, vssd(tag), text)

    def item(fields: list[tuple[str, str]]) -> None:
        element = sub(hardware, ovf("Item"))
        for tag, text in fields:  # CIM RASD properties, in the schema's (alphabetical) order
            sub(element, rasd(tag), text)

    item(
        [
            ("AllocationUnits", "hertz * 10^6"),
            ("Description", "Number of Virtual CPUs"),
            ("ElementName", f"{cpus} virtual CPU(s)"),
            ("InstanceID", "1"),
            ("ResourceType", str(RT_CPU)),
            ("VirtualQuantity", str(cpus)),
        ]
    )
    item(
        [
            ("AllocationUnits", "byte * 2^20"),
            ("Description", "Memory Size"),
            ("ElementName", f"{memory_mib}MB of memory"),
            ("InstanceID", "2"),
            ("ResourceType", str(RT_MEMORY)),
            ("VirtualQuantity", str(memory_mib)),
        ]
    )
    item(
        [
            ("Address", "0"),
            ("Description", "SCSI Controller"),
            ("ElementName", "SCSI Controller 0"),
            ("InstanceID", "3"),
            ("ResourceSubType", "lsilogic"),
            ("ResourceType", str(RT_SCSI)),
        ]
    )
    item(
        [
            ("AddressOnParent", "0"),
            ("ElementName", "Hard Disk 1"),
            ("HostResource", "ovf:/disk/vmdisk1"),
            ("InstanceID", "4"),
            ("Parent", "3"),
            ("ResourceType", str(RT_DISK)),
        ]
    )
    return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def _tarinfo(name: str, size: int, epoch: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = epoch
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.type = tarfile.REGTYPE
    return info


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def member_names(name: str) -> tuple[str, str, str]:
    return f"{name}.ovf", f"{name}.mf", f"{name}-disk1.vmdk"


def write_ova(
    raw: Path,
    out: Path,
    *,
    name: str,
    flavour: str,
    epoch: int,
    cpus: int = 1,
    memory_mib: int = 512,
    schema_dir: Path | None = None,
) -> None:
    """Export the raw disk ``raw`` as the OVA ``out`` (atomically; same inputs -> same bytes)."""
    raw, out = Path(raw), Path(out)
    if not raw.is_file():
        raise UserError(f"source disk {raw} does not exist: build it first or give the right path")
    if flavour not in OS_OF:
        raise UserError(f"unknown flavour '{flavour}': use one of {', '.join(OS_OF)}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}", name):
        raise UserError(
            f"OVA name {name!r} is not a plain file name stem: use letters, digits, '.', '_', '-'"
        )
    if not 0 <= epoch < 8**11:
        raise UserError(f"SOURCE_DATE_EPOCH {epoch} does not fit a ustar header: give a time after 1970")
    if not out.parent.is_dir():
        raise UserError(f"output directory {out.parent} does not exist: create it or choose another")
    allocated = raw.stat().st_blocks * 512
    require_free_space(out.parent, 2 * allocated + (1 << 20), f"the OVA {out.name}")
    ovf_name, mf_name, vmdk_name = member_names(name)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as work:
        vmdk = Path(work) / vmdk_name
        facts = write_stream_vmdk(raw, vmdk, extent_name=vmdk_name)
        ovf = build_ovf(
            name=name,
            flavour=flavour,
            disk_href=vmdk_name,
            disk_size=facts["size"],
            capacity=facts["capacity"],
            cpus=cpus,
            memory_mib=memory_mib,
        )
        directory = Path(schema_dir) if schema_dir else default_schema_dir()
        if (directory / "dsp8023_1.1.1.xsd").is_file():
            errors = schema_errors(etree.ElementTree(etree.fromstring(ovf, _safe_parser())), directory)
            if errors:
                raise OvaError(f"generated OVF is not schema-valid ({errors[0]}): report this bug")
        manifest = (
            f"SHA256({ovf_name})= {hashlib.sha256(ovf).hexdigest()}\n"
            f"SHA256({vmdk_name})= {_sha256_file(vmdk)}\n"
        ).encode()
        with atomic_path(out) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for member, data in ((ovf_name, ovf), (mf_name, manifest)):
                tar.addfile(_tarinfo(member, len(data), epoch), _BytesReader(data))
            with open(vmdk, "rb") as f:
                tar.addfile(_tarinfo(vmdk_name, facts["size"], epoch), f)


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        chunk = self.data[self.pos : end]
        self.pos += len(chunk)
        return chunk


# ---------------------------------------------------------------------------------------------- checking


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as exc:
        raise OvaError(
            f"{path} is not an uncompressed tar archive ({exc}): an OVA is a plain ustar tar"
        ) from None


def _units_factor(units: str | None) -> int:
    """``byte * 2^30`` -> 2**30 (DSP0004 programmatic units, as OVF uses them)."""
    if not units:
        return 1
    match = re.fullmatch(r"\s*byte\s*(?:\*\s*(\d+)\s*\^\s*(\d+))?\s*", units)
    if not match:
        raise OvaError(f"capacityAllocationUnits {units!r} is not 'byte' or 'byte * B^E': fix the OVF")
    return int(match[1]) ** int(match[2]) if match[1] else 1


def _parse_ovf(data: bytes, label: str) -> etree._ElementTree:
    try:
        return etree.ElementTree(etree.fromstring(data, _safe_parser()))
    except etree.XMLSyntaxError as exc:
        raise OvaError(
            f"OVF descriptor {label} is not well-formed XML ({exc}): export the OVA again"
        ) from None


def _disk_capacity(document: etree._ElementTree, label: str) -> tuple[etree._Element, int]:
    disks = document.findall(f"{{{OVF_NS}}}DiskSection/{{{OVF_NS}}}Disk")
    if len(disks) != 1:
        raise OvaError(f"OVF descriptor {label} has {len(disks)} disks, expected one: export the OVA again")
    disk = disks[0]
    capacity = disk.get(_q(OVF_NS, "capacity"), "")
    if not capacity.isdigit():
        raise OvaError(
            f"OVF disk capacity {capacity!r} in {label} is not a whole number: export the OVA again"
        )
    return disk, int(capacity) * _units_factor(disk.get(_q(OVF_NS, "capacityAllocationUnits")))


@contextlib.contextmanager
def _cut_short_is_an_ova_error(path: Path) -> Iterator[None]:
    """A tar that ends inside a member (a truncated download or copy) says so in one line."""
    try:
        yield
    except (tarfile.TarError, EOFError) as exc:
        raise OvaError(
            f"{path} is cut short or damaged (tar: {exc}): download or export the OVA again"
        ) from None


def ova_virtual_size(path: str | os.PathLike[str]) -> int:
    """The disk's virtual size in bytes, from the OVF descriptor's ``ovf:capacity``."""
    path = Path(path)
    with _cut_short_is_an_ova_error(path), _open_tar(path) as tar:
        first = tar.next()
        if first is None or not first.name.endswith(".ovf"):
            raise OvaError(f"{path}: the OVF descriptor is not the first member: export the OVA again")
        data = member_file(tar, first).read()
    return _disk_capacity(_parse_ovf(data, first.name), first.name)[1]


def _sha256_member(f: BinaryIO) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


FIX = "export the OVA again with 'invoke export --formats ova'"  # the fix of every fault check_ova finds


def check_ova(path: str | os.PathLike[str], schema_dir: Path | None = None) -> dict:
    """Check an OVA by the rules above; return its facts or raise OvaError naming the first fault."""
    path = Path(path)
    if not path.is_file():
        raise OvaError(f"{path} does not exist: give the path of an .ova file")
    with _cut_short_is_an_ova_error(path), _open_tar(path) as tar, open(path, "rb") as raw_file:
        members = _check_member_headers(tar, raw_file, path)
        names = [m.name for m in members]
        _check_member_order(names)
        by_name = {m.name: m for m in members}
        document = _check_descriptor(tar, by_name[names[0]], schema_dir)
        _check_manifest(tar, by_name, names)
        file_by_id = _check_references(document, names, by_name)
        capacity, vmdk_name, vmdk = _check_disk(tar, document, names[0], by_name, file_by_id)
        return _ova_facts(path, document, names, capacity, vmdk, by_name[vmdk_name].size)


def _check_member_headers(tar: tarfile.TarFile, raw_file: BinaryIO, path: Path) -> list[tarfile.TarInfo]:
    """The archive's members: at least one, each with a POSIX ustar header (read raw: tarfile accepts GNU
    and pre-POSIX headers too) and each a regular file."""
    members = tar.getmembers()
    if not members:
        raise OvaError(f"{path} is an empty tar archive: {FIX}")
    for member in members:
        raw_file.seek(member.offset)
        header = raw_file.read(512)
        if header[257:265] != USTAR_MAGIC:
            kind = "GNU" if header[257:265] == b"ustar  \0" else "pre-POSIX"
            raise OvaError(f"member {member.name} has a {kind} tar header, not ustar: {FIX}")
        if not member.isreg():
            raise OvaError(f"member {member.name} is not a regular file: {FIX}")
    return members


def _check_member_order(names: list[str]) -> None:
    """The descriptor first, the manifest second (DSP0243 5.3), and no name twice."""
    if not names[0].endswith(".ovf"):
        raise OvaError(f"the OVF descriptor is not the first member (the first is {names[0]}): {FIX}")
    if len(names) < 2 or not names[1].endswith(".mf"):
        raise OvaError(f"the manifest is not the second member (members: {', '.join(names)}): {FIX}")
    if len(set(names)) != len(names):
        raise OvaError(f"the archive holds a member name twice ({', '.join(names)}): {FIX}")


def _check_descriptor(
    tar: tarfile.TarFile, member: tarfile.TarInfo, schema_dir: Path | None
) -> etree._ElementTree:
    """The OVF descriptor, well-formed and valid against DSP8023 1.1.1; return its document."""
    document = _parse_ovf(member_file(tar, member).read(), member.name)
    errors = schema_errors(document, schema_dir)
    if errors:
        raise OvaError(f"OVF descriptor {member.name} is not valid against DSP8023 1.1.1: {errors[0]}")
    return document


def _check_manifest(tar: tarfile.TarFile, by_name: dict[str, tarfile.TarInfo], names: list[str]) -> None:
    """Manifest: every other member listed once, with the right SHA256."""
    ovf_name, mf_name = names[0], names[1]
    listed = _read_manifest(tar, by_name[mf_name])
    for name in names[2:] + [ovf_name]:
        if name not in listed:
            raise OvaError(f"manifest {mf_name} does not list {name}: {FIX}")
    for name, expected in listed.items():
        if name not in by_name:
            raise OvaError(f"manifest {mf_name} lists {name}, which is not in the archive: {FIX}")
        actual = _sha256_member(member_file(tar, by_name[name]))
        if actual != expected:
            raise OvaError(
                f"manifest mismatch for {name}: manifest says {expected}, content is {actual}: {FIX}"
            )


def _read_manifest(tar: tarfile.TarFile, member: tarfile.TarInfo) -> dict[str, str]:
    """The manifest's ``SHA256(name)= hex`` lines as name -> hex; any other line is a fault."""
    listed: dict[str, str] = {}
    for number, line in enumerate(member_file(tar, member).read().decode().splitlines(), 1):
        match = MANIFEST_LINE.match(line.strip())
        if not match:
            raise OvaError(
                f"manifest {member.name} line {number} is not 'SHA256(name)= hex': {line!r}: {FIX}"
            )
        listed[match["name"]] = match["hex"]
    return listed


def _check_references(
    document: etree._ElementTree, names: list[str], by_name: dict[str, tarfile.TarInfo]
) -> dict[str | None, str]:
    """References: every file present, in archive order after the manifest, with its real size; return
    the member named by each ovf:File id."""
    files = document.findall(f"{{{OVF_NS}}}References/{{{OVF_NS}}}File")
    hrefs = [f.get(_q(OVF_NS, "href")) for f in files]
    if names[2:] != hrefs:
        raise OvaError(
            f"members after the manifest {names[2:]} are not the OVF References {hrefs} in order: {FIX}"
        )
    file_by_id: dict[str | None, str] = {}
    for element in files:
        href = element.get(_q(OVF_NS, "href"))
        declared = element.get(_q(OVF_NS, "size"))
        if href is None or href not in by_name:
            raise OvaError(f"an ovf:File has no ovf:href naming a member of the archive: {FIX}")
        real = by_name[href].size
        if declared is None or not declared.isdigit() or int(declared) != real:
            raise OvaError(f"ovf:size of {href} is {declared} but the file has {real} bytes: {FIX}")
        file_by_id[element.get(_q(OVF_NS, "id"))] = href
    return file_by_id


def _check_disk(
    tar: tarfile.TarFile,
    document: etree._ElementTree,
    ovf_name: str,
    by_name: dict[str, tarfile.TarInfo],
    file_by_id: dict[str | None, str],
) -> tuple[int, str, dict]:
    """The one disk: streamOptimized, its file in References, a sound VMDK of the capacity the OVF
    declares; return that capacity, the VMDK's member name and its facts."""
    disk, capacity = _disk_capacity(document, ovf_name)
    fmt = disk.get(_q(OVF_NS, "format"))
    if fmt != STREAM_OPTIMIZED:
        raise OvaError(f"disk format is {fmt!r}, expected {STREAM_OPTIMIZED!r}: {FIX}")
    vmdk_name = file_by_id.get(disk.get(_q(OVF_NS, "fileRef")))
    if vmdk_name is None:
        raise OvaError(f"disk fileRef {disk.get(_q(OVF_NS, 'fileRef'))!r} names no File in References: {FIX}")
    try:
        vmdk = check_stream_vmdk(member_file(tar, by_name[vmdk_name]), by_name[vmdk_name].size, vmdk_name)
    except VmdkError as exc:
        raise OvaError(str(exc)) from None
    if vmdk["capacity"] != capacity:
        raise OvaError(
            f"capacity wrong: the OVF says {capacity} bytes for {vmdk_name} "
            f"but the VMDK holds {vmdk['capacity']} bytes: {FIX}"
        )
    return capacity, vmdk_name, vmdk


def _ova_facts(
    path: Path, document: etree._ElementTree, names: list[str], capacity: int, vmdk: dict, vmdk_size: int
) -> dict:
    """What check_ova reports of a sound OVA: members, disk, guest OS, hardware version, VM name."""
    system = document.find(f"{{{OVF_NS}}}VirtualSystem")
    os_section = system.find(f"{{{OVF_NS}}}OperatingSystemSection") if system is not None else None
    hw_type = document.findtext(
        f"{{{OVF_NS}}}VirtualSystem/{{{OVF_NS}}}VirtualHardwareSection/{{{OVF_NS}}}System/{{{VSSD_NS}}}VirtualSystemType"
    )
    return {
        "file": str(path),
        "members": names,
        "capacity": capacity,
        "vmdk": vmdk,
        "vmdk_size": vmdk_size,
        "os_id": os_section.get(_q(OVF_NS, "id")) if os_section is not None else None,
        "os_type": os_section.get(_q(VMW_NS, "osType")) if os_section is not None else None,
        "hardware": hw_type,
        "name": system.get(_q(OVF_NS, "id")) if system is not None else None,
    }
