"""Dynamic VHD as XenServer's blktap writes it (and as Hyper-V writes it): our writer and a checker.

Layout written by :func:`write_dynamic_vhd` (all integers big-endian)::

    0        footer copy (512 bytes, identical to the trailing footer)
    512      dynamic header "cxsparse" (1024 bytes)
    1536     BAT: one uint32 sector number per 2 MiB block, 0xFFFFFFFF = unallocated, padded to a sector
    ...      batmap header "tdbatmap" (one sector), then the batmap (bit per fully written block, MSB first)
    ...      blocks in increasing order: one bitmap sector (all ones) + 2 MiB of data
    end-512  footer

Rules follow the VHD specification plus blktap's libvhd/vhd-util (creator "tap", version 1.3, batmap 1.2,
creator host OS 0, batmap checksum over ``curr_size >> 24`` bytes rounded up to a sector).

The Hyper-V flavour (:data:`HYPERV`) is the same layout without the batmap (a blktap extension Windows
neither writes nor reads): the blocks follow the sector-padded BAT, and the footer names Windows as the
creator (see :data:`HYPERV` for the values and where they come from).
"""

from __future__ import annotations

import calendar
import dataclasses
import hashlib
import os
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from systemvm.atomic import atomic_path
from systemvm.errors import UserError

SECTOR = 512
BLOCK = 2 * 1024 * 1024
SECTORS_PER_BLOCK = BLOCK // SECTOR
BITMAP_SECTORS = 1  # 4096 sectors -> 512 bytes of bitmap
UNUSED = 0xFFFFFFFF
VHD_EPOCH = calendar.timegm((2000, 1, 1, 0, 0, 0))

COOKIE = b"conectix"
FEATURES = 0x00000002
FILE_FORMAT_VERSION = 0x00010000
CREATOR_APP = b"tap\0"
CREATOR_VERSION = 0x00010003
CREATOR_HOST_OS = 0x00000000  # what blktap's vhd_initialize_footer writes
TYPE_FIXED, TYPE_DYNAMIC, TYPE_DIFF = 2, 3, 4
HEADER_COOKIE = b"cxsparse"
HEADER_VERSION = 0x00010000
BATMAP_COOKIE = b"tdbatmap"
BATMAP_VERSION = 0x00010002
HEADER_OFFSET = SECTOR
TABLE_OFFSET = SECTOR + 1024
# Name space for the unique id: uuid5 over the content digest and the writer's rules.
UUID_NAMESPACE = uuid.UUID("5b1c3f0e-8f3a-5d2e-9a51-0c6d2f6e7a10")
WRITER_ID = "systemvm-vhd/1 tap-1.3 batmap-1.2"

# footer: cookie, features, version, data offset, timestamp, creator app, creator version, creator OS,
# original size, current size, geometry, type, checksum, uuid, saved, hidden, reserved (426)
FOOTER = struct.Struct(">8sIIQI4sIIQQIII16sBB426s")
# dynamic header: cookie, data offset, table offset, version, max entries, block size, checksum,
# parent uuid, parent timestamp, reserved1, parent name (512), 8 parent locators (8 x 24), reserved2 (256)
HEADER = struct.Struct(">8sQQIIII16sII512s192s256s")
# batmap header: cookie, batmap offset, batmap size (sectors), version, checksum, marker, rest
BATMAP_HEADER = struct.Struct(">8sQIIIB483s")
assert FOOTER.size == SECTOR and HEADER.size == 1024 and BATMAP_HEADER.size == SECTOR


@dataclasses.dataclass(frozen=True)
class Creator:
    """Who the footer says wrote the VHD, and whether that writer adds blktap's batmap."""

    name: str
    app: bytes  # creator application, 4 bytes
    version: int  # creator version, major << 16 | minor
    host_os: int  # creator host OS, 4 bytes read big-endian
    batmap: bool

    @property
    def label(self) -> str:
        return f"{self.app!r} version 0x{self.version:08x} host OS 0x{self.host_os:08x}"


XENSERVER = Creator("xenserver", CREATOR_APP, CREATOR_VERSION, CREATOR_HOST_OS, batmap=True)
# Hyper-V. Creator application "win ": the VHD specification's value for Windows, and the one qemu's
# block/vpc.c lists as Hyper-V ("'win ' : current_size  Hyper-V", so qemu takes the disk size from the
# footer's current size, not from the CHS geometry). Creator host OS "Wi2k" (0x5769326B): the VHD
# specification's value for Windows hosts. Creator version: Windows writes its own NT version there; we
# write 10.0, the version of Windows Server 2016 and later, the Hyper-V hosts CloudStack 4.20 supports (our
# reading, not checked against a file Hyper-V wrote). No batmap: that sector is blktap's own extension.
HYPERV = Creator("hyperv", b"win ", 0x000A0000, 0x5769326B, batmap=False)
CREATORS = {c.app: c for c in (XENSERVER, HYPERV)}


class VhdError(UserError):
    """A VHD breaks a rule; the message names the rule."""


def ones_complement_checksum(data: bytes) -> int:
    return ~sum(data) & 0xFFFFFFFF


def chs_geometry(size: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors per track) for ``size`` bytes, by the VHD specification's algorithm."""
    total = max(1, -(-size // SECTOR))
    total = min(total, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = total // spt
    else:
        spt = 17
        cth = total // spt
        heads = max(4, (cth + 1023) // 1024)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = total // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = total // spt
    return cth // heads, heads, spt


def encode_geometry(size: int) -> int:
    cylinders, heads, spt = chs_geometry(size)
    return (cylinders << 16) | (heads << 8) | spt


def vhd_timestamp(unix_time: int | None = None, *, now: float | None = None) -> int:
    """Seconds since 2000-01-01 UTC from ``unix_time`` (or SOURCE_DATE_EPOCH), never in the future."""
    current = int(time.time() if now is None else now)
    if unix_time is None:
        env = os.environ.get("SOURCE_DATE_EPOCH")
        if env is not None:
            try:
                unix_time = int(env)
            except ValueError:
                raise UserError(
                    f"SOURCE_DATE_EPOCH={env!r} is not an integer: set it to seconds since 1970"
                ) from None
        else:
            unix_time = current
    unix_time = min(unix_time, current)
    return max(0, unix_time - VHD_EPOCH)


def batmap_checksum_length(curr_size: int) -> int:
    """Bytes of the batmap that blktap's checksum covers (vhd_checksum_batmap)."""
    return max(1, -(-(curr_size >> 24) // SECTOR)) * SECTOR


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where everything sits in a dynamic VHD of ``size`` bytes as we write it."""

    size: int  # current size, a multiple of 2 MiB
    batmap: bool = True  # blktap's batmap (header sector + bitmap) between the BAT and the blocks

    @property
    def blocks(self) -> int:
        return self.size // BLOCK

    @property
    def bat_bytes(self) -> int:
        return max(1, _round_up(self.blocks * 4, SECTOR) // SECTOR) * SECTOR

    @property
    def batmap_header_offset(self) -> int:
        return TABLE_OFFSET + self.bat_bytes

    @property
    def batmap_offset(self) -> int:
        return self.batmap_header_offset + SECTOR

    @property
    def batmap_sectors(self) -> int:
        return max(1, -(-((self.blocks + 7) // 8) // SECTOR))

    @property
    def data_offset(self) -> int:
        if not self.batmap:
            return self.batmap_header_offset  # the first block right after the sector-padded BAT
        return self.batmap_offset + self.batmap_sectors * SECTOR


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) ranges of ``fd`` that may hold data, by SEEK_DATA/SEEK_HOLE (all if unsupported)."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == 6:  # ENXIO: no data after pos
                return
            yield pos, size  # no SEEK_DATA support: read everything
            return
        try:
            end = os.lseek(fd, start, os.SEEK_HOLE)
        except OSError:
            end = size
        end = min(end, size)
        yield start, end
        pos = end


def candidate_blocks(fd: int, size: int) -> list[int]:
    """Indexes of 2 MiB blocks that contain at least one byte of allocated data (sorted)."""
    seen: set[int] = set()
    for start, end in data_extents(fd, size):
        seen.update(range(start // BLOCK, (end - 1) // BLOCK + 1))
    return sorted(seen)


def _footer_bytes(*, timestamp: int, size: int, unique_id: bytes, creator: Creator = XENSERVER) -> bytes:
    fields = dict(
        cookie=COOKIE,
        features=FEATURES,
        version=FILE_FORMAT_VERSION,
        data_offset=HEADER_OFFSET,
        timestamp=timestamp,
        creator_app=creator.app,
        creator_version=creator.version,
        creator_os=creator.host_os,
        original_size=size,
        current_size=size,
        geometry=encode_geometry(size),
        disk_type=TYPE_DYNAMIC,
    )
    values = list(fields.values())
    blank = FOOTER.pack(*values, 0, unique_id, 0, 0, bytes(426))
    return FOOTER.pack(*values, ones_complement_checksum(blank), unique_id, 0, 0, bytes(426))


def _header_bytes(layout: Layout) -> bytes:
    args = [HEADER_COOKIE, 0xFFFFFFFFFFFFFFFF, TABLE_OFFSET, HEADER_VERSION, layout.blocks, BLOCK]
    tail = [bytes(16), 0, 0, bytes(512), bytes(192), bytes(256)]
    blank = HEADER.pack(*args, 0, *tail)
    return HEADER.pack(*args, ones_complement_checksum(blank), *tail)


def _batmap_bytes(layout: Layout, full_blocks: list[int]) -> tuple[bytes, bytes]:
    bitmap = bytearray(layout.batmap_sectors * SECTOR)
    for index in full_blocks:
        bitmap[index >> 3] |= 0x80 >> (index & 7)
    checksum = ones_complement_checksum(bytes(bitmap[: batmap_checksum_length(layout.size)]))
    header = BATMAP_HEADER.pack(
        BATMAP_COOKIE, layout.batmap_offset, layout.batmap_sectors, BATMAP_VERSION, checksum, 0, bytes(483)
    )
    return header, bytes(bitmap)


def write_dynamic_vhd(
    raw: Path, out: Path, *, timestamp: int | None = None, creator: Creator = XENSERVER
) -> None:
    """Write ``raw`` as a dynamic VHD at ``out`` (atomically). Only 2 MiB blocks holding data are written.

    ``timestamp`` is Unix time (default: SOURCE_DATE_EPOCH, else now); it is clamped to now. ``creator``
    picks the footer's creator fields and whether blktap's batmap is written (:data:`XENSERVER`,
    :data:`HYPERV`).
    """
    raw = Path(raw)
    if not raw.is_file():
        raise UserError(f"source disk {raw} does not exist: build it first or give the right path")
    raw_size = raw.stat().st_size
    if raw_size == 0:
        raise UserError(f"source disk {raw} is empty: give a raw disk image")
    size = _round_up(raw_size, BLOCK)
    if size // BLOCK > UNUSED - 1:
        raise UserError(f"source disk {raw} is too large for a VHD (2 TiB max): use a smaller disk")
    layout = Layout(size, batmap=creator.batmap)
    stamp = vhd_timestamp(timestamp)
    zero = bytes(BLOCK)
    bitmap_full = b"\xff" * SECTOR
    bat = [UNUSED] * layout.blocks
    written: list[int] = []
    digest = hashlib.sha256()
    with open(raw, "rb") as src, atomic_path(out) as tmp:
        fd = src.fileno()
        with open(tmp, "wb") as dst:
            dst.seek(layout.data_offset)
            sector = layout.data_offset // SECTOR
            for index in candidate_blocks(fd, raw_size):
                data = os.pread(fd, BLOCK, index * BLOCK)
                if len(data) < BLOCK:
                    data += bytes(BLOCK - len(data))
                if data == zero:
                    continue
                bat[index] = sector
                written.append(index)
                digest.update(struct.pack(">I", index))
                digest.update(data)
                dst.write(bitmap_full)
                dst.write(data)
                sector += BITMAP_SECTORS + SECTORS_PER_BLOCK
            name = f"{WRITER_ID} size={size} blocks={layout.blocks} sha256={digest.hexdigest()}"
            if creator != XENSERVER:  # another writer's file is another disk: its own id
                name += f" creator={creator.name}"
            unique_id = uuid.uuid5(UUID_NAMESPACE, name).bytes
            footer = _footer_bytes(timestamp=stamp, size=size, unique_id=unique_id, creator=creator)
            dst.write(footer)
            bat_bytes = struct.pack(f">{layout.blocks}I", *bat)
            bat_bytes += b"\xff" * (layout.bat_bytes - len(bat_bytes))
            head = footer + _header_bytes(layout) + bat_bytes
            if creator.batmap:
                batmap_header, batmap = _batmap_bytes(layout, written)
                head += batmap_header + batmap
            dst.seek(0)
            dst.write(head)
            dst.flush()
            os.fsync(dst.fileno())


# ----------------------------------------------------------------------------------------------- checker


@dataclasses.dataclass
class Footer:
    cookie: bytes
    features: int
    version: int
    data_offset: int
    timestamp: int
    creator_app: bytes
    creator_version: int
    creator_os: int
    original_size: int
    current_size: int
    geometry: int
    disk_type: int
    checksum: int
    unique_id: bytes
    saved: int
    hidden: int
    reserved: bytes

    @classmethod
    def parse(cls, data: bytes) -> Footer:
        return cls(*FOOTER.unpack(data))


@dataclasses.dataclass
class DynamicHeader:
    cookie: bytes
    data_offset: int
    table_offset: int
    version: int
    max_entries: int
    block_size: int
    checksum: int
    parent_uuid: bytes
    parent_timestamp: int
    reserved1: int
    parent_name: bytes
    parent_locators: bytes
    reserved2: bytes

    @classmethod
    def parse(cls, data: bytes) -> DynamicHeader:
        return cls(*HEADER.unpack(data))


def _creator_text(footer: Footer) -> str:
    app = footer.creator_app.rstrip(b"\0").decode(errors="replace")
    return f"{app} {footer.creator_version >> 16}.{footer.creator_version & 0xFFFF}"


def creator_of(footer: Footer, expected: Creator | None = None) -> Creator:
    """The known writer named by ``footer`` (or ``expected``, which it must match exactly)."""
    known = CREATORS.get(footer.creator_app) if expected is None else expected
    wanted = " or ".join(f"{c.app!r} ({c.name})" for c in ([expected] if expected else CREATORS.values()))
    if known is None or footer.creator_app != known.app or footer.creator_version != known.version:
        raise VhdError(
            f"wrong creator {footer.creator_app!r} version 0x{footer.creator_version:08x}, expected {wanted}"
            + (f" version 0x{known.version:08x}" if known else "")
        )
    if footer.creator_os != known.host_os:
        raise VhdError(
            f"creator host OS 0x{footer.creator_os:08x}, "
            f"expected 0x{known.host_os:08x} as {known.name} writes"
        )
    return known


def _check_footer(raw: bytes, where: str, now: int, expected: Creator | None = None) -> Footer:
    footer = Footer.parse(raw)
    if footer.cookie != COOKIE:
        raise VhdError(f"{where}: wrong cookie {footer.cookie!r}, expected b'conectix'")
    blank = raw[:64] + b"\0\0\0\0" + raw[68:]
    if ones_complement_checksum(blank) != footer.checksum:
        raise VhdError(
            f"{where}: bad footer checksum 0x{footer.checksum:08x}, "
            f"computed 0x{ones_complement_checksum(blank):08x}"
        )
    if footer.features != FEATURES:
        raise VhdError(f"{where}: features 0x{footer.features:08x}, expected 0x{FEATURES:08x}")
    if footer.version != FILE_FORMAT_VERSION:
        raise VhdError(f"{where}: wrong file format version 0x{footer.version:08x}, expected 0x00010000")
    try:
        creator_of(footer, expected)
    except VhdError as exc:
        raise VhdError(f"{where}: {exc}") from None
    if footer.timestamp > now - VHD_EPOCH:
        raise VhdError(
            f"{where}: timestamp in the future ({footer.timestamp + VHD_EPOCH} > now {now} in Unix seconds)"
        )
    if footer.disk_type not in (TYPE_FIXED, TYPE_DYNAMIC):
        raise VhdError(f"{where}: disk type {footer.disk_type} is neither fixed (2) nor dynamic (3)")
    if footer.disk_type == TYPE_DYNAMIC and footer.current_size % BLOCK:
        raise VhdError(f"{where}: current size {footer.current_size} is not a multiple of 2 MiB")
    if footer.geometry != encode_geometry(footer.current_size):
        c, h, s = footer.geometry >> 16, (footer.geometry >> 8) & 0xFF, footer.geometry & 0xFF
        ec, eh, es = chs_geometry(footer.current_size)
        raise VhdError(f"{where}: CHS mismatch {c}/{h}/{s}, expected {ec}/{eh}/{es} for the current size")
    if footer.saved != 0:
        raise VhdError(f"{where}: saved state is {footer.saved}, expected 0")
    if footer.hidden != 0:
        raise VhdError(f"{where}: hidden is {footer.hidden}, expected 0")
    if any(footer.reserved):
        raise VhdError(f"{where}: reserved bytes are not zero")
    if footer.unique_id == bytes(16):
        raise VhdError(f"{where}: unique id is null")
    return footer


def check_vhd(
    path: str | os.PathLike[str],
    *,
    check_data: bool = True,
    now: float | None = None,
    creator: Creator | None = None,
) -> dict:
    """Validate a VHD by blktap's and our rules; return a summary; raise :class:`VhdError` on the first fault.

    ``check_data`` also reads every block to verify that no sector holds data where its bitmap bit is clear.
    ``creator`` is the writer the footer must name (default: any of :data:`CREATORS`, whose rules then
    apply: the batmap only for XenServer's).
    """
    path = Path(path)
    if not path.is_file():
        raise VhdError(f"{path} is not a file: give the path of a .vhd")
    current = int(time.time() if now is None else now)
    file_size = path.stat().st_size
    if file_size < SECTOR or file_size % SECTOR:
        raise VhdError(f"file size {file_size} is not a positive multiple of 512 bytes")
    with open(path, "rb") as f:
        fd = f.fileno()
        trailing_raw = os.pread(fd, SECTOR, file_size - SECTOR)
        footer = _check_footer(trailing_raw, "trailing footer", current, creator)
        writer = creator_of(footer, creator)
        summary: dict = {
            "type": "dynamic" if footer.disk_type == TYPE_DYNAMIC else "fixed",
            "virtual_size": footer.current_size,
            "timestamp_unix": footer.timestamp + VHD_EPOCH,
            "uuid": str(uuid.UUID(bytes=footer.unique_id)),
            "creator": _creator_text(footer),
            "writer": writer.name,
            "geometry": "/".join(str(v) for v in chs_geometry(footer.current_size)),
            "file_size": file_size,
        }
        if footer.disk_type == TYPE_FIXED:
            if footer.data_offset != 0xFFFFFFFFFFFFFFFF:
                raise VhdError(f"fixed disk: data offset 0x{footer.data_offset:x}, expected all ones")
            if file_size != footer.current_size + SECTOR:
                raise VhdError(f"fixed disk: file is {file_size} bytes, expected size + 512")
            return summary
        if footer.data_offset != HEADER_OFFSET:
            raise VhdError(f"footer data offset {footer.data_offset}, expected 512 (dynamic header)")
        copy_raw = os.pread(fd, SECTOR, 0)
        if copy_raw != trailing_raw:
            _check_footer(copy_raw, "footer copy at 0", current, creator)
            raise VhdError(
                "footer copies differ: the copy at offset 0 is not the same as the trailing footer"
            )
        summary.update(_check_dynamic(fd, footer, file_size, check_data, writer.batmap))
    return summary


def _check_dynamic(fd: int, footer: Footer, file_size: int, check_data: bool, batmap_expected: bool) -> dict:
    """The dynamic disk's metadata and blocks, in file order: header, BAT, batmap, blocks, bitmaps."""
    header = _check_dynamic_header(fd, footer)
    bat, bat_bytes = _read_bat(fd, header, file_size)
    end_of_metadata = header.table_offset + bat_bytes
    if batmap_expected:
        # batmap: header right after the sector-padded BAT
        batmap, bm_sectors, end_of_metadata = _check_batmap(
            fd, header.table_offset + bat_bytes, header.max_entries, footer.current_size, file_size
        )
    else:  # Hyper-V: no batmap; the blocks may start right after the BAT
        batmap, bm_sectors = b"", 0
    blocks = footer.current_size // BLOCK
    used = _allocated_blocks(bat, blocks, end_of_metadata, file_size)
    used.sort()
    _check_blocks_apart(used)
    _check_batmap_bits(fd, batmap, bm_sectors, bat, header.max_entries)
    if check_data:
        _check_bitmaps_cover_data(fd, used)
    in_order = [i for _, i in used] == sorted(i for _, i in used)
    return {
        "blocks": blocks,
        "allocated_blocks": len(used),
        "batmap_full_blocks": sum(bin(b).count("1") for b in batmap),
        "blocks_in_order": in_order,
        "table_offset": header.table_offset,
        "max_table_entries": header.max_entries,
    }


def _check_dynamic_header(fd: int, footer: Footer) -> DynamicHeader:
    """Read the dynamic header after the footer copy; check its identity, then its layout fields."""
    raw = os.pread(fd, HEADER.size, HEADER_OFFSET)
    if len(raw) < HEADER.size:
        raise VhdError("dynamic header beyond EOF")
    header = DynamicHeader.parse(raw)
    _check_header_identity(raw, header)
    _check_header_layout(header, footer)
    return header


def _check_header_identity(raw: bytes, header: DynamicHeader) -> None:
    """Cookie, checksum and version: that this is a dynamic header, intact, of the version we know."""
    if header.cookie != HEADER_COOKIE:
        raise VhdError(f"dynamic header: wrong cookie {header.cookie!r}, expected b'cxsparse'")
    computed = ones_complement_checksum(raw[:36] + b"\0\0\0\0" + raw[40:])
    if computed != header.checksum:
        raise VhdError(f"dynamic header: bad checksum 0x{header.checksum:08x}, computed 0x{computed:08x}")
    if header.version != HEADER_VERSION:
        raise VhdError(f"dynamic header: wrong version 0x{header.version:08x}, expected 0x00010000")


def _check_header_layout(header: DynamicHeader, footer: Footer) -> None:
    """Data offset, block size, BAT position and size, and the parent fields a dynamic disk leaves zero."""
    if header.data_offset != 0xFFFFFFFFFFFFFFFF:
        raise VhdError(f"dynamic header: data offset 0x{header.data_offset:x}, expected all ones")
    if header.block_size != BLOCK:
        raise VhdError(f"dynamic header: block size {header.block_size}, expected 2 MiB")
    table_offset, max_entries = header.table_offset, header.max_entries
    if table_offset % SECTOR:
        raise VhdError(f"dynamic header: table offset {table_offset} not sector aligned")
    if table_offset < HEADER_OFFSET + HEADER.size:
        raise VhdError(f"dynamic header: table offset {table_offset} overlaps the header")
    blocks = footer.current_size // BLOCK
    if max_entries < blocks:
        raise VhdError(f"dynamic header: max table entries {max_entries} < {blocks} blocks of the disk")
    h = header
    if (
        h.parent_uuid != bytes(16)
        or h.parent_timestamp
        or h.reserved1
        or any(h.parent_name)
        or any(h.parent_locators)
        or any(h.reserved2)
    ):
        raise VhdError("dynamic header: parent fields or reserved bytes are not zero in a dynamic disk")


def _read_bat(fd: int, header: DynamicHeader, file_size: int) -> tuple[tuple[int, ...], int]:
    """The BAT's entries and its sector-padded size in bytes, once it is known to end before the footer."""
    bat_bytes = _round_up(header.max_entries * 4, SECTOR) or SECTOR
    if header.table_offset + bat_bytes > file_size - SECTOR:
        raise VhdError(f"BAT ({bat_bytes} bytes at {header.table_offset}) runs beyond EOF")
    entries = header.max_entries
    bat = struct.unpack(f">{entries}I", os.pread(fd, entries * 4, header.table_offset))
    return bat, bat_bytes


def _check_batmap(
    fd: int, bm_header_offset: int, max_entries: int, current_size: int, file_size: int
) -> tuple[bytes, int, int]:
    """blktap's batmap header and batmap; return the batmap, its size in sectors and where it ends."""
    bm_raw = os.pread(fd, SECTOR, bm_header_offset)
    bm_cookie, bm_offset, bm_sectors, bm_version, bm_checksum, _marker, _rest = BATMAP_HEADER.unpack(
        bm_raw.ljust(SECTOR, b"\0")
    )
    if bm_cookie != BATMAP_COOKIE:
        raise VhdError(f"batmap header: wrong cookie {bm_cookie!r} at {bm_header_offset}, expected tdbatmap")
    if bm_version != BATMAP_VERSION:
        raise VhdError(f"batmap header: version 0x{bm_version:08x}, expected 0x{BATMAP_VERSION:08x}")
    if bm_offset % SECTOR:
        raise VhdError(f"batmap offset {bm_offset} not sector aligned")
    if bm_offset != bm_header_offset + SECTOR:
        raise VhdError(f"batmap offset {bm_offset}, expected {bm_header_offset + SECTOR} (after its header)")
    if bm_sectors == 0 or bm_sectors * SECTOR * 8 < max_entries:
        raise VhdError(f"batmap size {bm_sectors} sectors is too small for {max_entries} BAT entries")
    if bm_offset + bm_sectors * SECTOR > file_size - SECTOR:
        raise VhdError("batmap runs beyond EOF")
    batmap = os.pread(fd, bm_sectors * SECTOR, bm_offset)
    computed = ones_complement_checksum(batmap[: batmap_checksum_length(current_size)])
    if computed != bm_checksum:
        raise VhdError(f"batmap checksum 0x{bm_checksum:08x}, computed 0x{computed:08x}")
    return batmap, bm_sectors, bm_offset + bm_sectors * SECTOR


BLOCK_SPAN = (BITMAP_SECTORS + SECTORS_PER_BLOCK) * SECTOR  # a block's bitmap sector and its data


def _allocated_blocks(
    bat: tuple[int, ...], blocks: int, end_of_metadata: int, file_size: int
) -> list[tuple[int, int]]:
    """(byte offset, block index) of each allocated block, each within the disk, after the metadata and
    before the footer (in BAT order)."""
    used: list[tuple[int, int]] = []
    for index, entry in enumerate(bat):
        if entry == UNUSED:
            continue
        if index >= blocks:
            raise VhdError(f"BAT entry {index} is allocated but lies beyond the disk's {blocks} blocks")
        offset = entry * SECTOR
        if offset < end_of_metadata:
            raise VhdError(f"block {index} at byte {offset} overlaps metadata ending at {end_of_metadata}")
        if offset + BLOCK_SPAN > file_size - SECTOR:
            raise VhdError(f"block {index} at byte {offset} runs beyond EOF (footer at {file_size - SECTOR})")
        used.append((offset, index))
    return used


def _check_blocks_apart(used: list[tuple[int, int]]) -> None:
    """No two blocks share a byte (``used`` sorted by offset)."""
    for (off_a, idx_a), (off_b, idx_b) in zip(used, used[1:], strict=False):
        if off_b < off_a + BLOCK_SPAN:
            raise VhdError(f"overlapping blocks: block {idx_a} at {off_a} and block {idx_b} at {off_b}")


def _check_batmap_bits(
    fd: int, batmap: bytes, bm_sectors: int, bat: tuple[int, ...], max_entries: int
) -> None:
    """A batmap bit is set only for an allocated block whose bitmap is all ones (fully written)."""
    full_bitmap = b"\xff" * SECTOR
    for index in range(min(max_entries, bm_sectors * SECTOR * 8)):
        if batmap[index >> 3] & (0x80 >> (index & 7)):
            if index >= len(bat) or bat[index] == UNUSED:
                raise VhdError(f"batmap bit set for unallocated block {index}")
            if os.pread(fd, SECTOR, bat[index] * SECTOR) != full_bitmap:
                raise VhdError(f"batmap marks block {index} fully written but its bitmap is not all ones")


def _check_bitmaps_cover_data(fd: int, used: list[tuple[int, int]]) -> None:
    """Every sector holding data has its bit set in its block's bitmap (reads every partial block)."""
    full_bitmap = b"\xff" * SECTOR
    for offset, index in used:
        bitmap = os.pread(fd, SECTOR, offset)
        if bitmap == full_bitmap:
            continue
        data = os.pread(fd, BLOCK, offset + SECTOR)
        for s in range(SECTORS_PER_BLOCK):
            if not bitmap[s >> 3] & (0x80 >> (s & 7)) and any(data[s * SECTOR : (s + 1) * SECTOR]):
                raise VhdError(f"sector {s} of block {index} holds data where its bitmap bit is clear")


def vhd_virtual_size(path: str | os.PathLike[str]) -> int:
    """The disk size a VHD presents (current size in its trailing footer)."""
    path = Path(path)
    size = path.stat().st_size
    if size < SECTOR:
        raise VhdError(f"{path} is too small to be a VHD")
    with open(path, "rb") as f:
        footer = Footer.parse(os.pread(f.fileno(), SECTOR, size - SECTOR))
    if footer.cookie != COOKIE:
        raise VhdError(f"{path}: no VHD footer (cookie {footer.cookie!r}): give a .vhd file")
    return footer.current_size
