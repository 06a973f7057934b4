"""StreamOptimized VMDK (version 3): a writer of our own and a structural checker.

Why our own: ``qemu-img convert -O vmdk -o subformat=streamOptimized`` (7.2) writes a random CID, the output
file's own name as the extent name and an IDE adapter type, so two runs differ. This writer follows VMware's
"Virtual Disk Format 5.0" specification, section "Stream-Optimized Compressed Sparse Extents":

- sector 0: the sparse extent header (magic ``KDMV``, version 3, flags: valid newline test, compressed
  grains, markers; ``gdOffset`` = GD_AT_END, the real value being in the footer);
- sector 1..20: the embedded descriptor (``createType="streamOptimized"``), zero-padded;
- from ``overHead`` (128 sectors = one grain): for each grain holding data, in increasing LBA order, a grain
  marker (LBA in sectors, compressed size) followed by the grain deflated with zlib (RFC 1950), padded to a
  sector; after the grains of each grain table (512 grains = 32 MiB) a GT marker and that grain table
  (entries = sector offset of the grain's marker, 0 = not present, reads as zeros);
- then a GD marker and the grain directory, a footer marker and the footer (the header with the real
  ``gdOffset``), and the end-of-stream marker. Readers find the footer 1536 bytes before the end.

Everything is derived from the disk's content, so the same raw disk gives the same bytes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

from systemvm.atomic import atomic_path
from systemvm.errors import UserError

SECTOR = 512
GRAIN_SECTORS = 128  # 64 KiB grains, VMware's default
GRAIN = GRAIN_SECTORS * SECTOR
GTES_PER_GT = 512
DESCRIPTOR_OFFSET = 1
DESCRIPTOR_SECTORS = 20
OVERHEAD_SECTORS = 128
GD_AT_END = 0xFFFFFFFFFFFFFFFF
MAGIC = 0x564D444B  # "KDMV" read little-endian
VERSION = 3
FLAG_NEWLINE_TEST = 1 << 0
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17
FLAGS = FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS
COMPRESSION_DEFLATE = 1
MARKER_EOS, MARKER_GT, MARKER_GD, MARKER_FOOTER = 0, 1, 2, 3
ZLIB_LEVEL = 6
# magic, version, flags, capacity, grainSize, descriptorOffset, descriptorSize, numGTEsPerGT, rgdOffset,
# gdOffset, overHead, uncleanShutdown, 4 newline-test characters, compressAlgorithm; then 433 pad bytes.
HEADER = struct.Struct("<IIIQQQQIQQQB4sH433x")
assert HEADER.size == SECTOR
MARKER = struct.Struct("<QII496x")  # metadata marker: numSectors, size (0), type
GRAIN_MARKER = struct.Struct("<QI")  # lba, compressed size; the data follows at once
ZERO_GRAIN = bytes(GRAIN)


class VmdkError(UserError):
    """A VMDK that breaks the streamOptimized rules."""


def _header(capacity_sectors: int, gd_offset: int) -> bytes:
    return HEADER.pack(
        MAGIC,
        VERSION,
        FLAGS,
        capacity_sectors,
        GRAIN_SECTORS,
        DESCRIPTOR_OFFSET,
        DESCRIPTOR_SECTORS,
        GTES_PER_GT,
        0,
        gd_offset,
        OVERHEAD_SECTORS,
        0,
        b"\n \r\n",
        COMPRESSION_DEFLATE,
    )


def _geometry(capacity_sectors: int) -> tuple[int, int, int]:
    """Cylinders/heads/sectors as VMware reports them for SCSI (lsilogic) disks: 255 heads, 63 sectors."""
    heads, sectors = 255, 63
    return min(capacity_sectors // (heads * sectors), 65535), heads, sectors


def descriptor_text(capacity_sectors: int, extent_name: str, digest: bytes, adapter: str = "lsilogic") -> str:
    cid = int.from_bytes(digest[:4], "big") or 1
    if cid == 0xFFFFFFFF:
        cid = 0xFFFFFFFE
    cylinders, heads, sectors = _geometry(capacity_sectors)
    lines = [
        "# Disk DescriptorFile",
        "version=1",
        'encoding="UTF-8"',
        f"CID={cid:08x}",
        "parentCID=ffffffff",
        'createType="streamOptimized"',
        "",
        "# Extent description",
        f'RW {capacity_sectors} SPARSE "{extent_name}"',
        "",
        "# The Disk Data Base",
        "#DDB",
        "",
        f'ddb.adapterType = "{adapter}"',
        f'ddb.geometry.cylinders = "{cylinders}"',
        f'ddb.geometry.heads = "{heads}"',
        f'ddb.geometry.sectors = "{sectors}"',
        f'ddb.longContentID = "{digest[:16].hex()}"',
        'ddb.virtualHWVersion = "4"',
        "",
    ]
    return "\n".join(lines)


def _pad(n: int) -> int:
    return -n % SECTOR


def _data_grains(src: BinaryIO, size: int) -> list[int] | None:
    """Grain numbers that may hold data, from SEEK_DATA/SEEK_HOLE; None when the file system cannot tell."""
    fd = src.fileno()
    grains: list[int] = []
    offset = 0
    try:
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after offset
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            first, last = start // GRAIN, (min(end, size) - 1) // GRAIN
            if grains and grains[-1] >= first:
                first = grains[-1] + 1
            grains.extend(range(first, last + 1))
            offset = end
    except (OSError, AttributeError):
        return None
    return grains


def _compress(data: bytes) -> bytes:
    return zlib.compress(data, ZLIB_LEVEL)


def write_stream_vmdk(raw: Path, out: Path, *, extent_name: str | None = None, threads: int = 2) -> dict:
    """Write ``raw`` as a streamOptimized VMDK at ``out`` (atomically); return size, capacity and digest."""
    raw, out = Path(raw), Path(out)
    if not raw.is_file():
        raise UserError(f"source disk {raw} does not exist: build it first or give the right path")
    size = raw.stat().st_size
    if size == 0 or size % SECTOR:
        raise UserError(
            f"source disk {raw} is {size} bytes, not a non-empty multiple of 512: give a raw disk"
        )
    capacity = size // SECTOR
    grain_count = -(-size // GRAIN)
    gt_count = -(-grain_count // GTES_PER_GT)
    digest = hashlib.sha256(struct.pack("<Q", size))
    with open(raw, "rb") as src, atomic_path(out) as tmp, open(tmp, "w+b") as dst:
        candidates = _data_grains(src, size)
        if candidates is None:
            candidates = list(range(grain_count))
        dst.write(bytes(OVERHEAD_SECTORS * SECTOR))  # header and descriptor are written last, in place
        position = OVERHEAD_SECTORS * SECTOR
        gd = [0] * gt_count
        gt = [0] * GTES_PER_GT
        current_gt = 0

        def flush_tables(up_to: int) -> None:
            """Write the grain tables before table ``up_to`` that are still open."""
            nonlocal current_gt, gt, position
            while current_gt < up_to:
                dst.write(MARKER.pack(4, 0, MARKER_GT))
                gd[current_gt] = position // SECTOR + 1
                dst.write(struct.pack(f"<{GTES_PER_GT}I", *gt))
                position += SECTOR + GTES_PER_GT * 4
                gt = [0] * GTES_PER_GT
                current_gt += 1

        def read_grains(batch: list[int]) -> list[tuple[int, bytes]]:
            found = []
            for grain in batch:
                src.seek(grain * GRAIN)
                data = src.read(min(GRAIN, size - grain * GRAIN))
                if data != ZERO_GRAIN[: len(data)]:
                    found.append((grain, data))
            return found

        batch_size = 64
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for start in range(0, len(candidates), batch_size):
                found = read_grains(candidates[start : start + batch_size])
                for (grain, data), packed in zip(
                    found, pool.map(_compress, [d for _, d in found]), strict=True
                ):
                    flush_tables(grain // GTES_PER_GT)
                    lba = grain * GRAIN_SECTORS
                    digest.update(struct.pack("<Q", lba))
                    digest.update(data)
                    gt[grain % GTES_PER_GT] = position // SECTOR
                    record = GRAIN_MARKER.pack(lba, len(packed)) + packed
                    record += bytes(_pad(len(record)))
                    dst.write(record)
                    position += len(record)
        flush_tables(gt_count)
        gd_bytes = struct.pack(f"<{gt_count}I", *gd)
        gd_bytes += bytes(_pad(len(gd_bytes)))
        dst.write(MARKER.pack(len(gd_bytes) // SECTOR, 0, MARKER_GD))
        gd_offset = position // SECTOR + 1
        dst.write(gd_bytes)
        dst.write(MARKER.pack(1, 0, MARKER_FOOTER))
        dst.write(_header(capacity, gd_offset))
        dst.write(MARKER.pack(0, 0, MARKER_EOS))
        total = dst.tell()
        content = digest.digest()
        text = descriptor_text(capacity, extent_name or out.name, content).encode()
        if len(text) > DESCRIPTOR_SECTORS * SECTOR:
            raise UserError(f"VMDK extent name {extent_name!r} is too long: use a shorter name")
        dst.seek(0)
        dst.write(_header(capacity, GD_AT_END))
        dst.write(text)
        dst.flush()
        os.fsync(dst.fileno())
    return {"size": total, "capacity": size, "content_digest": content.hex()}


def _parse_descriptor(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("RW ", "RDONLY ", "NOACCESS ")):
            values.setdefault("extent", line)
            continue
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip('"')
    return values


class _StreamReader:
    """The VMDK being checked: reads at an offset, and words a fault the way every check reports it."""

    def __init__(self, f: BinaryIO, length: int, name: str) -> None:
        self.f, self.length, self.name = f, length, name

    def fail(self, problem: str) -> VmdkError:
        return VmdkError(f"{self.name}: {problem}: export the OVA again with 'invoke export --formats ova'")

    def read_at(self, offset: int, n: int) -> bytes:
        self.f.seek(offset)
        data = self.f.read(n)
        if len(data) != n:
            raise self.fail(f"truncated at byte {offset}")
        return data


@dataclasses.dataclass(frozen=True)
class _Header:
    """The sparse extent header's fields the rest of the check uses."""

    version: int
    capacity: int  # sectors
    descriptor_offset: int  # sectors
    descriptor_size: int  # sectors
    gd_offset: int  # sectors, or GD_AT_END


def check_stream_vmdk(f: BinaryIO, length: int, name: str = "VMDK") -> dict:
    """Check a streamOptimized VMDK read from ``f`` (seekable, ``length`` bytes) and return its facts.

    Checks the header, the descriptor, the footer, the grain directory and every grain table and grain
    marker it points to (grains are located, not decompressed). Raises VmdkError naming the first fault.
    """
    stream = _StreamReader(f, length, name)
    header = _check_header(stream)
    descriptor = _check_descriptor(stream, header)
    gd_off, limit = _grain_directory_offset(stream, header)
    grains = _count_grains(stream, header, gd_off, limit)
    return {
        "version": header.version,
        "capacity": header.capacity * SECTOR,
        "grains": grains,
        "cid": descriptor.get("CID", ""),
        "adapter": descriptor.get("ddb.adapterType", ""),
    }


def _check_header(stream: _StreamReader) -> _Header:
    """The file's size, then the sparse extent header at byte 0: magic, version, flags, newline test,
    compression, grain and table sizes."""
    fail, length = stream.fail, stream.length
    if length < OVERHEAD_SECTORS * SECTOR + 3 * SECTOR or length % SECTOR:
        raise fail(f"size {length} is not a streamOptimized VMDK's (sector multiple, header and footer)")
    head = HEADER.unpack(stream.read_at(0, SECTOR))
    magic, version, flags, capacity, grain, desc_off, desc_size, gtes, _rgd, gd_off, _overhead = head[:11]
    if magic != MAGIC:
        raise fail("no KDMV sparse extent magic at byte 0 (not a sparse VMDK)")
    if version != VERSION:
        raise fail(f"header version is {version}, expected {VERSION}")
    if flags & (FLAG_COMPRESSED | FLAG_MARKERS) != FLAG_COMPRESSED | FLAG_MARKERS:
        raise fail(f"header flags 0x{flags:x} lack compressed grains and markers")
    if head[12] != b"\n \r\n":
        raise fail("newline detection characters are damaged (file was transferred in text mode)")
    if head[13] != COMPRESSION_DEFLATE:
        raise fail(f"compression algorithm {head[13]}, expected 1 (deflate)")
    if grain != GRAIN_SECTORS or gtes != GTES_PER_GT:
        raise fail(f"grain size {grain} sectors / {gtes} entries per table, expected 128 / 512")
    return _Header(version, capacity, desc_off, desc_size, gd_off)


def _check_descriptor(stream: _StreamReader, header: _Header) -> dict[str, str]:
    """The embedded descriptor: a streamOptimized disk whose one extent is sparse and of the header's
    capacity; return its values."""
    raw = stream.read_at(header.descriptor_offset * SECTOR, header.descriptor_size * SECTOR)
    text = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    descriptor = _parse_descriptor(text)
    if descriptor.get("createType") != "streamOptimized":
        raise stream.fail(
            f"descriptor createType is {descriptor.get('createType')!r}, expected 'streamOptimized'"
        )
    extent = descriptor.get("extent", "").split()
    capacity = header.capacity
    if len(extent) < 3 or extent[2] != "SPARSE" or int(extent[1]) != capacity:
        raise stream.fail(
            f"descriptor extent line {descriptor.get('extent')!r} does not match capacity {capacity}"
        )
    return descriptor


def _grain_directory_offset(stream: _StreamReader, header: _Header) -> tuple[int, int]:
    """Where the grain directory is (sectors), from the footer when the stream ends with one, else from
    the header; and the first sector past the grains and tables (the footer's, or the end of the file)."""
    fail, length, header_gd = stream.fail, stream.length, header.gd_offset
    end = stream.read_at(length - 3 * SECTOR, 3 * SECTOR)
    has_footer = (
        MARKER.unpack(end[:SECTOR])[2] == MARKER_FOOTER
        and MARKER.unpack(end[2 * SECTOR :])[:3] == (0, 0, MARKER_EOS)
        and HEADER.unpack(end[SECTOR : 2 * SECTOR])[0] == MAGIC
    )
    limit = length // SECTOR - (3 if has_footer else 0)
    if has_footer:
        foot = HEADER.unpack(end[SECTOR : 2 * SECTOR])
        if foot[3] != header.capacity or foot[9] in (0, GD_AT_END):
            raise fail("footer does not repeat the header with a real grain directory offset")
        gd_off = foot[9]
        if header_gd not in (GD_AT_END, gd_off):
            raise fail(f"header gdOffset {header_gd} is neither GD_AT_END nor the footer's {gd_off}")
    elif header_gd == GD_AT_END:
        # A stream writer that leaves gdOffset to the footer must end with footer marker, footer, EOS.
        raise fail("no footer marker, footer and end-of-stream marker in the last 1536 bytes")
    else:
        gd_off = header_gd  # e.g. qemu-img 7.2 writes the directory early and no footer
    return gd_off, limit


def _count_grains(stream: _StreamReader, header: _Header, gd_off: int, limit: int) -> int:
    """Every grain directory entry inside the file, then its grain table; return the grains present."""
    gt_count = -(-header.capacity // (GRAIN_SECTORS * GTES_PER_GT))
    gd = struct.unpack(f"<{gt_count}I", stream.read_at(gd_off * SECTOR, gt_count * 4))
    grains = 0
    first_free = header.descriptor_offset + header.descriptor_size  # metadata and grains follow it
    for t, gt_off in enumerate(gd):
        if gt_off == 0:
            continue
        if not first_free <= gt_off < limit:
            raise stream.fail(f"grain directory entry {t} points outside the file (sector {gt_off})")
        grains += _check_grain_table(stream, t, gt_off, first_free, limit)
    return grains


def _check_grain_table(stream: _StreamReader, t: int, gt_off: int, first_free: int, limit: int) -> int:
    """Grain table ``t``: each entry inside the file, at a grain marker for that grain's LBA with a
    plausible compressed size; return the grains it holds."""
    table = struct.unpack(f"<{GTES_PER_GT}I", stream.read_at(gt_off * SECTOR, GTES_PER_GT * 4))
    grains = 0
    for i, off in enumerate(table):
        if off in (0, 1):
            continue
        lba = (t * GTES_PER_GT + i) * GRAIN_SECTORS
        if not first_free <= off < limit:
            raise stream.fail(f"grain table {t} entry {i} points outside the file (sector {off})")
        marker_lba, marker_size = GRAIN_MARKER.unpack(stream.read_at(off * SECTOR, GRAIN_MARKER.size))
        if marker_lba != lba or not 0 < marker_size <= GRAIN + 1024:
            raise stream.fail(
                f"grain at sector {off} has marker LBA {marker_lba}, size {marker_size}; expected LBA {lba}"
            )
        grains += 1
    return grains
