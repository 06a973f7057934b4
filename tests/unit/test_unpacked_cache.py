"""The one cache of unpacked artifacts: made once, shared, seeded by the export, bounded."""

from __future__ import annotations

import bz2
import os
from pathlib import Path

import pytest

from systemvm.errors import UserError
from systemvm.export import decompress


def packed(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(bz2.compress(content))
    return path


def test_unpacked_copy_is_named_by_the_digest_and_made_once(tmp_path: Path) -> None:
    artifact = packed(tmp_path, "a.vhd.bz2", b"conectix" * 100)
    cache = tmp_path / "cache"
    copy = decompress.unpacked_copy(artifact, "vhd", lambda p: True, "wrong", cache)
    assert copy == cache / f"{decompress.sha512_of(artifact)}.vhd"
    assert copy.read_bytes() == b"conectix" * 100


@pytest.mark.parametrize("content", [b"not bzip2 at all", None])
def test_wrong_content_is_one_line_and_nothing_is_kept(tmp_path: Path, content: bytes | None) -> None:
    if content is None:
        artifact = packed(tmp_path, "a.vhd.bz2", b"a qcow2 perhaps, not a VHD")
    else:
        artifact = tmp_path / "a.vhd.bz2"
        artifact.write_bytes(content)
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="give the export") as info:
        decompress.unpacked_copy(artifact, "vhd", lambda p: False, "give the export", cache)
    assert "\n" not in str(info.value)
    assert [p.name for p in cache.iterdir()] == [decompress.LOCK_NAME]


def test_the_export_seeds_the_cache_so_nothing_is_unpacked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = tmp_path / "disk.qcow2"
    plain.write_bytes(b"QFI\xfb" + b"\0" * 100)
    final = packed(tmp_path, "x-kvm.qcow2.bz2", plain.read_bytes())
    cache = tmp_path / "cache"
    assert decompress.keep_unpacked(plain, decompress.sha512_of(final), "qcow2", cache)
    assert not plain.exists()
    monkeypatch.setattr(decompress, "decompress_bz2", lambda *a: pytest.fail("unpacked what the export left"))
    copy = decompress.unpacked_copy(final, "qcow2", lambda p: True, "wrong", cache)
    assert copy.read_bytes() == b"QFI\xfb" + b"\0" * 100


def test_keep_unpacked_leaves_the_file_when_it_cannot_move_it(tmp_path: Path) -> None:
    plain = tmp_path / "disk.vhd"
    plain.write_bytes(b"x")
    blocker = tmp_path / "cache"
    blocker.write_bytes(b"a file where the cache directory should be")
    assert not decompress.keep_unpacked(plain, "0" * 128, "vhd", blocker)
    assert plain.read_bytes() == b"x"


def test_the_cache_keeps_only_the_most_recently_used(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    for i in range(decompress.KEEP_ENTRIES + 3):
        entry = cache / f"{i:0128x}.qcow2"
        entry.write_bytes(b"x")
        os.utime(entry, (1000 + i, 1000 + i))
    oldest = cache / f"{0:0128x}.qcow2"
    os.utime(oldest, (5000, 5000))  # used last: kept although made first
    removed = decompress.prune(cache, keep=set())
    assert len(removed) == 3 and oldest not in removed
    assert len(list(cache.glob("*.qcow2"))) == decompress.KEEP_ENTRIES
