"""Hyper-V's artifact as CloudStack publishes it: ``<stem>-hyperv.vhd.zip``, one dynamic VHD in a zip.

The VHD is our writer's (:func:`systemvm.export.formats.vhd.write_dynamic_vhd`) with Hyper-V's creator
fields and no blktap batmap (:data:`systemvm.export.formats.vhd.HYPERV`). The zip is deterministic: one
entry named ``<stem>-hyperv.vhd``, deflated, its time SOURCE_DATE_EPOCH (in UTC, as a zip stores local time
without a zone; clamped to 1980, the first year a zip can hold), Unix attributes ``-rw-r--r--``, no extra
fields and no comment, so the same disk and epoch give the same bytes.

Seeding unpacks it as CloudStack's ``cloud-install-sys-tmplt -h hyperv`` does: the extension is ``vhd`` and
``createtmplt.sh`` unzips the file, so secondary storage holds ``<uuid>.vhd``.
"""

from __future__ import annotations

import shutil
import time
import zipfile
import zlib
from pathlib import Path

from systemvm.atomic import atomic_path
from systemvm.errors import UserError

SUFFIX = "hyperv.vhd.zip"
ZIP_EPOCH_MIN = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o100644  # regular file, rw-r--r--
CREATE_SYSTEM_UNIX = 3
DEFLATE_LEVEL = 6  # zip's and zlib's default: what a release engineer's `zip` would write
CHUNK = 4 * 2**20


def zip_date_time(epoch: int) -> tuple[int, int, int, int, int, int]:
    """The zip entry's date and time for Unix time ``epoch``: UTC, 2-second resolution, 1980 at the least."""
    stamp = time.gmtime(max(0, int(epoch)))[:6]
    if stamp < ZIP_EPOCH_MIN:
        return ZIP_EPOCH_MIN
    year, month, day, hour, minute, second = stamp
    return (year, month, day, hour, minute, second - second % 2)


def entry_info(name: str, epoch: int, size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=zip_date_time(epoch))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = CREATE_SYSTEM_UNIX
    info.external_attr = FILE_MODE << 16
    info.file_size = size  # known in advance: zipfile then decides on zip64 from it, not from a guess
    return info


def write_vhd_zip(vhd: Path, out: Path, *, entry: str, epoch: int) -> None:
    """Zip the VHD ``vhd`` into ``out`` (atomically) as the single entry ``entry``, deterministically."""
    vhd = Path(vhd)
    if not vhd.is_file():
        raise UserError(f"VHD {vhd} does not exist: write it first")
    size = vhd.stat().st_size
    info = entry_info(entry, epoch, size)
    with atomic_path(Path(out)) as tmp:
        # a seekable file: the local header gets the sizes and CRC afterwards (no data descriptor), so a
        # streaming reader (systemvm-seed, unzip -p) knows the member's length from its header
        with open(tmp, "wb") as raw_out, zipfile.ZipFile(raw_out, "w", compresslevel=DEFLATE_LEVEL) as zf:
            with open(vhd, "rb") as src, zf.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, CHUNK)


def write_hyperv_zip(raw: Path, out: Path, work: Path, *, entry: str, epoch: int) -> Path:
    """Write ``out`` from the raw disk ``raw``; return the uncompressed VHD (in ``work``) it holds."""
    from systemvm.export.formats.vhd import HYPERV, check_vhd, write_dynamic_vhd

    plain = Path(work) / "disk-hyperv.vhd"
    write_dynamic_vhd(raw, plain, timestamp=epoch, creator=HYPERV)
    check_vhd(plain, check_data=False, creator=HYPERV)
    write_vhd_zip(plain, out, entry=entry, epoch=epoch)
    return plain


def unzip_vhd(archive: Path, target: Path) -> Path:
    """Extract the one VHD of a Hyper-V zip into ``target``; one clear line when it is not such a zip."""
    archive, target = Path(archive), Path(target)
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            if len(names) != 1 or not names[0].endswith(".vhd") or "/" in names[0]:
                raise UserError(f"{archive.name} holds {names}, not one .vhd: give the -hyperv.vhd.zip")
            with zf.open(names[0]) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
    except (zipfile.BadZipFile, zlib.error) as exc:
        raise UserError(f"{archive.name} is not a readable zip ({exc}): fetch it again") from None
    return target
