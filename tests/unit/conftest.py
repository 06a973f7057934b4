"""Helpers for the export tests: small raw disks and independent readers of VHD files."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MIB = 2**20

# pyvhdi (Debian python3-libvhdi) is built for the system interpreter; read through whichever has it.
_PYVHDI_EXPORT = """
import sys, pyvhdi
f = pyvhdi.file()
f.open(sys.argv[1])
size = f.get_media_size()
with open(sys.argv[2], "wb") as out:
    offset = 0
    while offset < size:
        n = min(4 << 20, size - offset)
        out.write(f.read_buffer_at_offset(n, offset))
        offset += n
f.close()
"""


# Compare in place instead of exporting: a real disk is 5 GiB virtual, and writing it out then reading both
# back cost more than the reading itself.
_PYVHDI_COMPARE = """
import sys, pyvhdi
f = pyvhdi.file()
f.open(sys.argv[1])
size = f.get_media_size()
if size != int(sys.argv[3]):
    sys.exit(f"libvhdi reads a disk of {size} bytes, not {sys.argv[3]}")
with open(sys.argv[2], "rb") as raw:
    offset = 0
    while offset < size:
        n = min(4 << 20, size - offset)
        want = raw.read(n)
        want += bytes(n - len(want))  # past the raw disk's end: zeros up to the VHD's rounded size
        if f.read_buffer_at_offset(n, offset) != want:
            sys.exit(f"libvhdi reads other bytes than the raw disk in the 4 MiB at offset {offset}")
        offset += n
f.close()
"""


def pyvhdi_python() -> str | None:
    for candidate in (sys.executable, "/usr/bin/python3"):
        if candidate and Path(candidate).exists():
            probe = subprocess.run([candidate, "-c", "import pyvhdi"], capture_output=True)
            if probe.returncode == 0:
                return candidate
    return None


def read_with_libvhdi(vhd: Path, out: Path) -> Path:
    """Export a VHD's disk contents with libvhdi (python3-libvhdi), independent of our code and qemu."""
    python = pyvhdi_python()
    if python is None:
        pytest.fail("libvhdi's Python binding is missing: apt-get install python3-libvhdi")
    subprocess.run([python, "-c", _PYVHDI_EXPORT, str(vhd), str(out)], check=True)
    return out


def libvhdi_reads_the_raw_disk(vhd: Path, raw: Path, virtual_size: int) -> str:
    """ "" when libvhdi reads ``vhd`` as ``raw`` followed by zeros up to ``virtual_size``; else why not."""
    python = pyvhdi_python()
    if python is None:
        pytest.fail("libvhdi's Python binding is missing: apt-get install python3-libvhdi")
    done = subprocess.run(
        [python, "-c", _PYVHDI_COMPARE, str(vhd), str(raw), str(virtual_size)], capture_output=True, text=True
    )
    return "" if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")


def qemu_reads_the_raw_disk(image: Path, fmt: str, raw: Path) -> str:
    """ "" when qemu-img reads ``image`` as ``raw`` (a larger image's extra bytes zero); else why not.
    ``qemu-img compare`` reads both in place: no 5 GiB read-back file."""
    done = subprocess.run(
        ["qemu-img", "compare", "-f", fmt, "-F", "raw", str(image), str(raw)], capture_output=True, text=True
    )
    return "" if done.returncode == 0 else (done.stdout + done.stderr).strip() or f"exit {done.returncode}"


def read_with_qemu(image: Path, fmt: str, out: Path) -> Path:
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", str(image), str(out)], check=True)
    return out


def same_disk(raw: Path, readback: Path, virtual_size: int) -> bool:
    """``readback`` equals ``raw`` followed by zeros up to ``virtual_size``."""
    if readback.stat().st_size != virtual_size:
        return False
    with open(raw, "rb") as a, open(readback, "rb") as b:
        while True:
            chunk = a.read(MIB)
            if not chunk:
                break
            if b.read(len(chunk)) != chunk:
                return False
        while rest := b.read(MIB):
            if rest.count(0) != len(rest):
                return False
    return True


def make_raw(path: Path, size: int, pieces: list[tuple[int, bytes]]) -> Path:
    """A sparse file of ``size`` bytes with ``pieces`` (offset, data) written; the rest are holes."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in pieces:
            f.seek(offset)
            f.write(data)
    return path


def pattern(n: int, seed: int = 1) -> bytes:
    """Deterministic, incompressible bytes."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:n])


@pytest.fixture
def raw_disks(tmp_path: Path) -> dict[str, Path]:
    """Small raw disks: sparse with data in some blocks, odd size, empty, explicit zeros, full."""
    disks = {
        # 10 MiB + 3 sectors: data in block 0, across the block 2/3 boundary, and in the odd tail
        "sparse-odd": make_raw(
            tmp_path / "sparse-odd.raw",
            10 * MIB + 3 * 512,
            [(0, pattern(4096, 1)), (6 * MIB - 1024, pattern(8192, 2)), (10 * MIB + 512, b"tail" * 128)],
        ),
        "empty": make_raw(tmp_path / "empty.raw", 8 * MIB, []),
        "odd-small": make_raw(tmp_path / "odd-small.raw", 3 * MIB + 512, [(0, pattern(3 * MIB + 512, 3))]),
    }
    zeros = tmp_path / "zeros.raw"
    zeros.write_bytes(bytes(4 * MIB) + b"\x01" + bytes(511))
    disks["written-zeros"] = zeros
    return disks


@pytest.fixture
def need_tools():
    def check(*tools: str) -> None:
        missing = [t for t in tools if shutil.which(t) is None]
        if missing:
            pytest.fail(f"host tools missing: {', '.join(missing)}")

    return check


@pytest.fixture(autouse=True)
def own_unpacked_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exports made by unit tests hand their files to the cache of unpacked artifacts: give each test a
    cache of its own, so they never push a real build's entries out of the user's cache."""
    monkeypatch.setenv("SYSTEMVM_CACHE_DIR", str(tmp_path / "unpacked-cache"))
