"""Unpack ``.bz2`` artifacts, once: the decompressor, and the one cache of unpacked artifacts.

Every hypervisor driver that needs a published ``.bz2`` unpacked (KVM boots its qcow2 as a backing file, the
XenServer driver uploads its VHD) asks :func:`unpacked_copy`. The copy lives in ``<cache>/<sha512 of the
.bz2>.<kind>``, made atomically under a lock, so the matrix's cells of one flavour unpack it once between them
(six XenServer cells each unpacked the VHD into their own work directory before: 75 s of CPU each on 2
cores, taken from the guests booting beside them, measured). The export, which holds the uncompressed file
just before it compresses it, leaves it in the cache under the final file's digest (:func:`keep_unpacked`),
so a test run right after a build unpacks nothing. The cache keeps the most recently used entries only.
"""

from __future__ import annotations

import bz2
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from systemvm.atomic import atomic_path
from systemvm.defaults import cache_root
from systemvm.errors import UserError
from systemvm.progress import phase

CHUNK = 1 << 20
LOCK_NAME = ".decompress.lock"
KEEP_ENTRIES = 4  # both flavours' qcow2 and VHD (about 1 GB each)


def decompress_bz2(source: Path, target: Path) -> None:
    """Write the decompressed content of ``source`` to ``target``: lbzip2 (parallel) when installed, else
    bzip2, else Python's bz2. Raises OSError or ``subprocess.CalledProcessError`` when ``source`` cannot be
    read or is not bzip2."""
    tool = shutil.which("lbzip2") or shutil.which("bzip2")
    if tool:
        with open(target, "wb") as out:
            subprocess.run([tool, "-dc", str(source)], stdout=out, stderr=subprocess.PIPE, check=True)
        return
    with bz2.open(source, "rb") as src, open(target, "wb") as out:
        shutil.copyfileobj(src, out, 16 * CHUNK)


def cache_dir() -> Path:
    """``$SYSTEMVM_CACHE_DIR``, else ``unpacked/`` under the project's one cache root."""
    explicit = os.environ.get("SYSTEMVM_CACHE_DIR")
    return Path(explicit) if explicit else cache_root() / "unpacked"


def sha512_of(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        while chunk := f.read(4 * CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def cache_lock(cache: Path) -> Iterator[None]:
    """One writer at a time per cache; the others wait, then find the file made."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / LOCK_NAME, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with phase("wait for another run unpacking into the same cache"):
                fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def unpacked_copy(
    artifact: Path,
    kind: str,
    valid: Callable[[Path], bool],
    wrong: str,
    cache: Path | None = None,
) -> Path:
    """The unpacked content of the ``.bz2`` ``artifact`` as ``<cache>/<sha512>.<kind>``, made once.

    ``valid`` tells whether an unpacked file holds what the caller needs; when it does not, ``wrong`` is
    the one-line error (nothing is kept). A file that is not bzip2 raises the same error."""
    cache = Path(cache) if cache else cache_dir()
    target = cache / f"{sha512_of(artifact)}.{kind}"
    if not target.is_file():
        with cache_lock(cache):
            if not target.is_file():  # another run may have made it while we waited
                with phase(f"decompress {artifact.name} to {target}"), atomic_path(target) as tmp:
                    try:
                        decompress_bz2(artifact, tmp)
                    except (OSError, subprocess.CalledProcessError) as exc:
                        raise UserError(f"cannot decompress {artifact} ({_reason(exc)}): {wrong}") from None
                    if not valid(tmp):
                        raise UserError(wrong)
            prune(cache, keep={target})
    os.utime(target)  # most recently used: pruning keeps it
    return target


def keep_unpacked(plain: Path, sha512: str, kind: str, cache: Path | None = None) -> bool:
    """Move the export's uncompressed ``plain`` into the cache as the unpacked copy of the file whose digest
    is ``sha512``. Only a rename (same filesystem) is worth it; otherwise ``plain`` is left to the caller.
    Returns whether it moved."""
    cache = Path(cache) if cache else cache_dir()
    target = cache / f"{sha512}.{kind}"
    try:
        with cache_lock(cache):
            os.replace(plain, target)
            prune(cache, keep={target})
    except OSError:  # another filesystem (EXDEV), a read-only cache: the cache is an optimisation only
        return False
    return True


def prune(cache: Path, keep: set[Path], entries: int = KEEP_ENTRIES) -> list[Path]:
    """Remove all but the ``entries`` most recently used unpacked copies (never one of ``keep``); call with
    the cache lock held. Returns what it removed."""
    files = [p for p in cache.iterdir() if p.is_file() and not p.name.startswith(".")]
    files.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    removed = [p for p in files[entries:] if p not in keep]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def _reason(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError) and exc.stderr:
        text = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else str(exc.stderr)
        return (text.strip().splitlines() or ["not bzip2"])[-1]
    return str(exc)
