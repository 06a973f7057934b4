"""QCOW2 for CloudStack's KVM hosts: compressed, compat 0.10 (qcow2 version 2), written by qemu-img."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from systemvm.atomic import atomic_path
from systemvm.errors import ToolFailed, UserError, first_error_line
from systemvm.hosttools import require_tools


def write_qcow2(raw: Path, out: Path) -> None:
    """``qemu-img convert -c -O qcow2 -o compat=0.10`` into ``out`` (atomically).

    ``-m 1`` (one coroutine) keeps cluster allocation in input order so that the same raw disk always gives
    the same bytes; qcow2 itself holds no timestamps.
    """
    require_tools("qemu-img")
    raw = Path(raw)
    if not raw.is_file():
        raise UserError(f"source disk {raw} does not exist: build it first or give the right path")
    with atomic_path(out) as tmp:
        cmd = ["qemu-img", "convert", "-q", "-m", "1", "-f", "raw", "-c", "-O", "qcow2"]
        cmd += ["-o", "compat=0.10", str(raw), str(tmp)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            message = first_error_line(result.stderr) or result.stderr.strip() or "unknown error"
            raise ToolFailed(f"qemu-img could not write {out.name}: {message}; check source disk and space")


def image_info(path: Path) -> dict:
    require_tools("qemu-img")
    result = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        message = first_error_line(result.stderr) or result.stderr.strip() or "unknown error"
        raise UserError(f"qemu-img cannot read {path}: {message}")
    return json.loads(result.stdout)


def qcow2_virtual_size(path: Path) -> int:
    """The disk size a QCOW2 image presents."""
    info = image_info(Path(path))
    if info.get("format") != "qcow2":
        raise UserError(f"{path} is {info.get('format')}, not qcow2: give a .qcow2 file")
    return int(info["virtual-size"])
