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
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from systemvm import naming
from systemvm.atomic import atomic_path, require_free_space
from systemvm.errors import UserError
from systemvm.export import detect, publish, sbom
from systemvm.export.decompress import keep_unpacked
from systemvm.progress import human_bytes, phase

FORMATS = ("qcow2", "vhd", "ova", "hyperv")
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


def _write_qcow2_bz2(raw: Path, final: Path, work: Path) -> Path:
    """Write ``final``; return the uncompressed qcow2 it was made from (the caller keeps or drops it)."""
    from systemvm.export.formats.qcow2 import write_qcow2

    plain = work / "disk.qcow2"
    write_qcow2(raw, plain)
    publish.compress_bz2(plain, final)
    return plain


def _write_vhd_bz2(raw: Path, final: Path, work: Path, epoch: int) -> Path:
    """Write ``final``; return the uncompressed VHD it was made from (the caller keeps or drops it)."""
    from systemvm.export.formats.vhd import check_vhd, write_dynamic_vhd

    plain = work / "disk.vhd"
    write_dynamic_vhd(raw, plain, timestamp=epoch)
    check_vhd(plain, check_data=False)
    publish.compress_bz2(plain, final)
    return plain


def _write_hyperv_zip(raw: Path, final: Path, work: Path, epoch: int) -> Path:
    """Write ``final``; return the uncompressed VHD it holds (the caller drops it)."""
    from systemvm.export.formats.hyperv import write_hyperv_zip

    entry = final.name.removesuffix(".zip")
    return write_hyperv_zip(raw, final, work, entry=entry, epoch=epoch)


def _write_ova(raw: Path, final: Path, name: str, flavour: str, epoch: int) -> None:
    from systemvm.export.formats import ova

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
    if flavour not in naming.FLAVOURS:
        raise UserError(f"unknown flavour '{flavour}': use one of {', '.join(naming.FLAVOURS)}")
    formats = parse_formats(formats)
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
                if fmt == "qcow2":
                    plain = _write_qcow2_bz2(raw, final, work)
                elif fmt == "vhd":
                    plain = _write_vhd_bz2(raw, final, work, epoch)
                elif fmt == "hyperv":
                    _write_hyperv_zip(raw, final, work, epoch).unlink()  # the cache holds .bz2 contents only
                else:
                    _write_ova(raw, final, stem, flavour, epoch)
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
    if len(raws) == 1:
        ((flavour, raw),) = raws.items()
        return {
            flavour: export_flavour(
                raw, out_dir, version, flavour, formats, epoch=epochs[flavour], base_url=base_url
            )
        }
    for raw in raws.values():  # both fit before either starts (each checks its share again as it begins)
        check_raw_disk(Path(raw))
    check_output_dir(Path(out_dir), sum(space_needed(Path(r), parse_formats(formats)) for r in raws.values()))
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


def epoch_for(manifest: Path) -> int:
    """SOURCE_DATE_EPOCH from the environment, else the manifest's ``source_date_epoch``."""
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        try:
            return int(env)
        except ValueError:
            raise UserError(f"SOURCE_DATE_EPOCH={env!r} is not an integer: set seconds since 1970") from None
    if manifest.is_file():
        try:
            value = json.loads(manifest.read_text()).get("source_date_epoch")
        except json.JSONDecodeError:
            value = None
        if value is not None:
            return int(value)
    raise UserError(
        f"no SOURCE_DATE_EPOCH: set the environment variable, or build first so {manifest.name} records it"
    )


def bench_export(raw: Path, tmp: Path) -> list[tuple[str, str]]:
    """Rows (what, numbers): per format time, output size and ratio to the raw disk's allocated bytes;
    then plain bzip2 versus lbzip2 on the qcow2."""
    from systemvm.export.formats.qcow2 import write_qcow2
    from systemvm.export.formats.vhd import write_dynamic_vhd

    raw, tmp = Path(raw), Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    allocated = max(1, allocated_bytes(raw))
    rows: list[tuple[str, str]] = [("raw allocated", human_bytes(allocated))]

    def timed(label: str, action, output: Path) -> float:
        start = time.monotonic()
        action()
        took = time.monotonic() - start
        size = output.stat().st_size
        rows.append((label, f"{took:.1f} s, {human_bytes(size)}, ratio {size / allocated:.3f}"))
        return took

    qcow2 = tmp / "bench.qcow2"
    vhd = tmp / "bench.vhd"
    timed("qcow2 (qemu-img -c)", lambda: write_qcow2(raw, qcow2), qcow2)
    timed("vhd (our writer)", lambda: write_dynamic_vhd(raw, vhd, timestamp=0), vhd)
    timed("vhd.bz2", lambda: publish.compress_bz2(vhd, tmp / "bench.vhd.bz2"), tmp / "bench.vhd.bz2")
    from systemvm.export.formats import ova

    out = tmp / "bench.ova"
    timed("ova", lambda: ova.write_ova(raw, out, name="bench", flavour="amd64", epoch=0), out)
    plain = tmp / "bench.plain.bz2"
    parallel = tmp / "bench.parallel.bz2"
    timed("qcow2.bz2 with bzip2", lambda: publish.compress_bz2(qcow2, plain, parallel=False), plain)
    if shutil.which("lbzip2"):
        timed(
            f"qcow2.bz2 with lbzip2 ({os.cpu_count()} CPUs)",
            lambda: publish.compress_bz2(qcow2, parallel, parallel=True),
            parallel,
        )
        rows.append(("lbzip2 output identical across runs", str(publish.lbzip2_usable())))
    for path in tmp.glob("bench*"):
        path.unlink()
    return rows
