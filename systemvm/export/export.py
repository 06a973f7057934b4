"""Export a flavour's raw disk as CloudStack publishes it: qcow2.bz2 (KVM), vhd.bz2 (Xen), ova (VMware),
vhd.zip (Hyper-V).

Inputs are checked before anything is written; every output goes through a temporary name, so a failed or
interrupted export leaves no partial file. Afterwards the flavour's build manifest (key ``artifacts``)
and its SBOM (:mod:`systemvm.export.sbom`) are written, and sha512sum.txt, md5sum.txt (which list every
published file: artifacts, manifests, SBOMs, metadata.ini) and metadata.ini are refreshed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from systemvm import naming
from systemvm.atomic import atomic_path, require_free_space
from systemvm.errors import UserError
from systemvm.export import detect, publish, sbom
from systemvm.export.decompress import keep_unpacked
from systemvm.profile import profile_for
from systemvm.progress import phase, reading, say

FORMATS = naming.FORMATS
HEADROOM = 64 * 2**20


def parse_formats(text: str | list[str]) -> list[str]:
    """``qcow2,vhd,ova,hyperv`` -> list, in that canonical order; unknown names give one clear line."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise UserError(f"no export format given: use one or more of {','.join(FORMATS)}")
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise UserError(f"unknown export format '{unknown[0]}': use one or more of {','.join(FORMATS)}")
    return [f for f in FORMATS if f in names]


def published_formats(flavour: str, formats: list[str]) -> list[str]:
    """Of ``formats``, those ``flavour`` is published in (arm64: qcow2 only, as CloudStack publishes
    aarch64), saying which are left out; none left is the user's error."""
    kept = naming.published_formats(flavour, formats)
    if not kept:
        only = ",".join(naming.PUBLISHED_FORMATS[flavour])
        raise UserError(
            f"{flavour} is published as {only} only, not {','.join(formats)}: pass --formats {only}"
        )
    if kept != formats:
        say(
            f"    {flavour}: {', '.join(f for f in formats if f not in kept)} not made ({flavour} is "
            f"published as {','.join(kept)} only)"
        )
    return kept


def allocated_bytes(path: Path) -> int:
    return Path(path).stat().st_blocks * 512


def check_raw_disk(raw: Path) -> int:
    """The raw disk's size; a missing, empty, odd-sized or non-raw file gives one clear line."""
    raw = Path(raw)
    if not raw.exists():
        raise UserError(f"source disk {raw} does not exist: run 'invoke build' first or give --artifacts")
    if not raw.is_file():
        raise UserError(f"source disk {raw} is not a regular file: give the path of a raw disk image")
    size = raw.stat().st_size
    with open(raw, "rb") as f:
        head = f.read(512)
        f.seek(max(0, size - 512))
        tail = f.read(512)
    kind = detect.kind_of_bytes(head)
    if kind != "raw":
        name = detect.DESCRIPTION[kind]
        raise UserError(f"source disk {raw} is a {name} file, not a raw disk: export from the .raw image")
    if detect.kind_of_bytes(b"", tail) == "vhd":
        raise UserError(f"source disk {raw} is a fixed VHD, not a raw disk: export from the .raw image")
    if size == 0 or size % 512:
        raise UserError(
            f"source disk {raw} is {size} bytes, not a non-empty multiple of 512: give a raw disk"
        )
    return size


def check_output_dir(out_dir: Path, needed: int) -> None:
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise UserError(f"output directory {out_dir} does not exist: create it or choose another")
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise UserError(f"output directory {out_dir} is not writable: fix its permissions or choose another")
    require_free_space(out_dir, needed, "the exports")


def space_needed(raw: Path, formats: list[str]) -> int:
    """Upper bound: one uncompressed intermediate at a time plus every final file, each <= allocated bytes."""
    data = allocated_bytes(raw)
    return data * (1 + len(formats)) + HEADROOM


# Each step shows how much of its input it has read (progress.reading): the raw disk's data for the
# converters (they skip its holes), the whole intermediate file for bzip2 and deflate.


def _write_qcow2_bz2(raw: Path, final: Path, work: Path, label: str) -> Path:
    """Write ``final``; return the uncompressed qcow2 it was made from (the caller keeps or drops it)."""
    from systemvm.export.formats.qcow2 import write_qcow2

    plain = work / "disk.qcow2"
    with reading(f"{label}: qemu-img", allocated_bytes(raw)):
        write_qcow2(raw, plain)
    with reading(f"{label}: bzip2", plain.stat().st_size):
        publish.compress_bz2(plain, final)
    return plain


def _write_vhd_bz2(raw: Path, final: Path, work: Path, epoch: int, label: str) -> Path:
    """Write ``final``; return the uncompressed VHD it was made from (the caller keeps or drops it)."""
    from systemvm.export.formats.vhd import check_vhd, write_dynamic_vhd

    plain = work / "disk.vhd"
    with reading(f"{label}: VHD", allocated_bytes(raw)):
        write_dynamic_vhd(raw, plain, timestamp=epoch)
    check_vhd(plain, check_data=False)
    with reading(f"{label}: bzip2", plain.stat().st_size):
        publish.compress_bz2(plain, final)
    return plain


def _write_hyperv_zip(raw: Path, final: Path, work: Path, epoch: int, label: str) -> Path:
    """Write ``final``; return the uncompressed VHD it holds (the caller drops it)."""
    from systemvm.export.formats.hyperv import write_hyperv_zip

    entry = final.name.removesuffix(".zip")
    with reading(f"{label}: VHD, then deflate", 2 * allocated_bytes(raw)):  # the disk, then the VHD
        return write_hyperv_zip(raw, final, work, entry=entry, epoch=epoch)


def _write_ova(raw: Path, final: Path, name: str, flavour: str, epoch: int, label: str) -> None:
    from systemvm.export.formats import ova

    with reading(f"{label}: VMDK", allocated_bytes(raw)):
        ova.write_ova(raw, final, name=name, flavour=flavour, epoch=epoch)


def export_flavour(
    raw: Path,
    out_dir: Path,
    version: str,
    flavour: str,
    formats: list[str],
    *,
    epoch: int,
    base_url: str | None = None,
) -> dict[str, dict]:
    """Write ``formats`` of ``raw`` into ``out_dir`` under CloudStack's names; return per format
    ``{"file", "size", "sha512", "md5"}``. Refreshes the checksum lists, metadata.ini and the manifest."""
    raw, out_dir = Path(raw), Path(out_dir)
    profile_for(version)  # the CloudStack line decides metadata.ini: an unsupported one fails before any work
    if flavour not in naming.FLAVOURS:
        raise UserError(f"unknown flavour '{flavour}': use one of {', '.join(naming.FLAVOURS)}")
    formats = published_formats(flavour, parse_formats(formats))
    check_raw_disk(raw)
    check_output_dir(out_dir, space_needed(raw, formats))
    base_url = base_url or publish.default_base_url(version)
    stem = naming.stem(version, flavour)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as work_name:
        work = Path(work_name)
        for fmt in formats:
            final = out_dir / naming.export_name(version, flavour, fmt)
            with phase(f"export {flavour} {fmt} -> {final.name}"):
                plain = None
                label = f"{flavour} {fmt}"
                if fmt == "qcow2":
                    plain = _write_qcow2_bz2(raw, final, work, label)
                elif fmt == "vhd":
                    plain = _write_vhd_bz2(raw, final, work, epoch, label)
                elif fmt == "hyperv":  # the cache holds .bz2 contents only
                    _write_hyperv_zip(raw, final, work, epoch, label).unlink()
                else:
                    _write_ova(raw, final, stem, flavour, epoch, label)
                digests = publish.file_digests(final)
            if plain is not None:
                # What a later boot or upload would unpack from ``final``: hand it to the cache of unpacked
                # artifacts instead of deleting it (a rename; skipped across filesystems).
                if not keep_unpacked(plain, str(digests["sha512"]), fmt):
                    plain.unlink()
            results[fmt] = {"file": final.name, **digests}
    manifest = out_dir / naming.manifest(Path("."), version, flavour).name
    record_in_manifest(manifest, results)
    listed: dict[str, dict] = {r["file"]: r for r in results.values()}
    if manifest.is_file():
        with phase(f"SBOM {flavour} -> {sbom.sbom_name(version, flavour)}"):
            written = sbom.write_sbom(out_dir, manifest, epoch)
        listed.update({p.name: publish.file_digests(p) for p in (manifest, written)})
    with listing_lock(out_dir):
        publish.refresh_listing(out_dir, version, listed, base_url)
    return results


@contextlib.contextmanager
def listing_lock(out_dir: Path) -> Iterator[None]:
    """Hold the release directory's lock while its checksum lists and metadata.ini are rewritten: flavours
    export at once (threads of one build, or two builds), and each rewrites the files both share. A lock
    on the directory itself leaves no lock file among the published ones."""
    fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def export_flavours(
    raws: dict[str, Path],
    out_dir: Path,
    version: str,
    formats: list[str],
    *,
    epochs: dict[str, int],
    base_url: str | None = None,
) -> dict[str, dict[str, dict]]:
    """:func:`export_flavour` for each flavour of ``raws`` (with its SOURCE_DATE_EPOCH from ``epochs``) at
    once; per flavour its results.

    Exporting is a chain of mostly single-threaded steps (qemu-img convert, the VHD writer, deflate for the
    VMDK and the Hyper-V zip) with lbzip2 between them, so two flavours side by side keep a second core
    busy that one flavour leaves idle. The first failure is raised once both have ended.
    """
    profile_for(version)
    wanted = parse_formats(formats)
    published = {f: r for f, r in raws.items() if naming.published_formats(f, wanted)}
    if len(raws) > 1 and published:  # a flavour published in none of them (arm64 for vhd) is left out
        for flavour in sorted(raws.keys() - published.keys()):
            only = ",".join(naming.PUBLISHED_FORMATS[flavour])
            say(f"    {flavour}: not exported ({flavour} is published as {only} only)")
        raws = published
    if len(raws) == 1:
        ((flavour, raw),) = raws.items()
        return {
            flavour: export_flavour(
                raw, out_dir, version, flavour, formats, epoch=epochs[flavour], base_url=base_url
            )
        }
    for raw in raws.values():  # both fit before either starts (each checks its share again as it begins)
        check_raw_disk(Path(raw))
    check_output_dir(
        Path(out_dir),
        sum(space_needed(Path(r), naming.published_formats(f, wanted)) for f, r in raws.items()),
    )
    with ThreadPoolExecutor(max_workers=len(raws), thread_name_prefix="export") as pool:
        futures = {
            flavour: pool.submit(
                export_flavour,
                raw,
                out_dir,
                version,
                flavour,
                formats,
                epoch=epochs[flavour],
                base_url=base_url,
            )
            for flavour, raw in raws.items()
        }
        return {flavour: future.result() for flavour, future in futures.items()}


def record_in_manifest(manifest: Path, results: dict[str, dict]) -> None:
    """Add each artifact's format, size and sha512 under ``artifacts`` of the manifest, if it exists."""
    if not manifest.is_file():
        return
    try:
        data = json.loads(manifest.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"manifest {manifest} is not valid JSON ({exc.msg}): rebuild or fix it") from None
    artifacts = data.setdefault("artifacts", {})
    for fmt, info in results.items():
        artifacts[info["file"]] = {"format": fmt, "size": info["size"], "sha512": info["sha512"]}
    data["artifacts"] = dict(sorted(artifacts.items()))
    with atomic_path(manifest) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
