"""A raw disk's content digest at the cost of what the disk holds, not of its virtual size.

The build records it in the manifest (``raw_disk``) and every export compares the disk with it first, so a
disk truncated, cut short by a full filesystem or replaced after its build is refused before anything is
written. A SHA-256 of the whole 5 GiB disk would hash 4 GiB of zeros; this one hashes, in order, the offset
and bytes of every 64 KiB block that is not all zeros (holes are zeros), then the size. It is the same
for the same content however the file is stored (sparse or not, copied with or without holes), and
reading only the data extents (``SEEK_DATA``) costs about what reading the allocated bytes costs.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

METHOD = "sha256 of the offset and bytes of each non-zero 64 KiB block, then the size"
BLOCK = 64 * 1024
READ = 64 * BLOCK  # 4 MiB per read
_ZERO = bytes(BLOCK)


def _data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(start, end) of the file's data, by SEEK_DATA/SEEK_HOLE (the whole file where they are unknown)."""
    extents, offset = [], 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole from here to the end
                break
            return [(0, size)]  # no SEEK_DATA on this filesystem: read everything
        end = os.lseek(fd, start, os.SEEK_HOLE)
        extents.append((start, end))
        offset = end
    return extents


def content_digest(path: str | os.PathLike[str]) -> str:
    """The digest of the disk at ``path`` (hex), as described above."""
    digest = hashlib.sha256()
    size = Path(path).stat().st_size
    with open(path, "rb") as handle:
        fd = handle.fileno()
        done = 0  # every block before this offset is hashed (two extents may share a block)
        for start, end in _data_extents(fd, size):
            offset = max(done, start - start % BLOCK)
            while offset < end:
                data = os.pread(fd, min(READ, size - offset), offset)
                if not data:
                    break
                view = memoryview(data)
                for at in range(0, len(data), BLOCK):
                    block = view[at : at + BLOCK]
                    if block != _ZERO[: len(block)]:
                        digest.update((offset + at).to_bytes(8, "big"))
                        digest.update(block)
                offset += len(data)
            done = max(done, offset)
    digest.update(size.to_bytes(8, "big"))
    return digest.hexdigest()
