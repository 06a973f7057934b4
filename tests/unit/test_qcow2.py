"""QCOW2 export through qemu-img: compat 0.10, compressed, deterministic, reads back to the raw disk."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest

from systemvm.errors import UserError
from systemvm.export.formats.qcow2 import qcow2_virtual_size, write_qcow2
from tests.unit.conftest import read_with_qemu, same_disk


def sha512(path):
    return hashlib.sha512(path.read_bytes()).hexdigest()


def test_qcow2_is_compat_010_and_reads_back(raw_disks, tmp_path, need_tools):
    need_tools("qemu-img")
    raw = raw_disks["sparse-odd"]
    out = tmp_path / "disk.qcow2"
    write_qcow2(raw, out)
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(out)], capture_output=True, check=True
        ).stdout
    )
    assert info["format"] == "qcow2"
    assert info["format-specific"]["data"]["compat"] == "0.10"
    assert qcow2_virtual_size(out) == raw.stat().st_size
    assert out.read_bytes()[4:8] == b"\0\0\0\x02"  # qcow2 version 2
    back = read_with_qemu(out, "qcow2", tmp_path / "back.raw")
    assert same_disk(raw, back, raw.stat().st_size)


def test_qcow2_is_deterministic(raw_disks, tmp_path, need_tools):
    need_tools("qemu-img")
    raw = raw_disks["odd-small"]
    write_qcow2(raw, tmp_path / "a.qcow2")
    write_qcow2(raw, tmp_path / "b.qcow2")
    assert sha512(tmp_path / "a.qcow2") == sha512(tmp_path / "b.qcow2")


def test_qcow2_bad_input_leaves_nothing(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        write_qcow2(tmp_path / "missing.raw", tmp_path / "out.qcow2")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="not qcow2"):
        (tmp_path / "plain.raw").write_bytes(bytes(4096))
        qcow2_virtual_size(tmp_path / "plain.raw")
