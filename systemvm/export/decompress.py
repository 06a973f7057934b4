"""Unpack a ``.bz2`` artifact to a file: lbzip2 (parallel) when installed, else bzip2, else Python's bz2."""

from __future__ import annotations

import bz2
import shutil
import subprocess
from pathlib import Path

CHUNK = 1 << 20


def decompress_bz2(source: Path, target: Path) -> None:
    """Write the decompressed content of ``source`` to ``target``. Raises OSError or
    ``subprocess.CalledProcessError`` when ``source`` cannot be read or is not bzip2."""
    tool = shutil.which("lbzip2") or shutil.which("bzip2")
    if tool:
        with open(target, "wb") as out:
            subprocess.run([tool, "-dc", str(source)], stdout=out, stderr=subprocess.PIPE, check=True)
        return
    with bz2.open(source, "rb") as src, open(target, "wb") as out:
        shutil.copyfileobj(src, out, 16 * CHUNK)
