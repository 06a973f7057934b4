"""Support for the seeding tests (no tests here): small real artifacts (qemu-img, tar), a Range-capable HTTP
server on 127.0.0.1 that can cut connections, a byte-for-byte tree snapshot, and what CloudStack writes."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import http.server
import lzma
import os
import re
import subprocess
import tarfile
import threading
import zipfile
from pathlib import Path

MIB = 1 << 20


def make_raw(path: Path, size: int = 8 * MIB) -> Path:
    """A raw disk with some data and some holes (so compression and sparseness both matter)."""
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset in range(0, size, 2 * MIB):
            handle.seek(offset)
            # 128 KiB of incompressible (but reproducible) data per 2 MiB
            handle.write(b"".join(hashlib.sha512(f"{offset}/{i}".encode()).digest() for i in range(2048)))
    return path


def make_qcow2(work: Path, size: int = 8 * MIB) -> Path:
    raw = make_raw(work / "disk.raw", size)
    out = work / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-O", "qcow2", "-o", "compat=0.10", str(raw), str(out)], check=True
    )
    return out


def make_vhd(work: Path, size: int = 8 * MIB) -> Path:
    raw = make_raw(work / "disk.raw", size)
    out = work / "disk.vhd"
    subprocess.run(
        ["qemu-img", "convert", "-O", "vpc", "-o", "subformat=dynamic,force_size=on", str(raw), str(out)],
        check=True,
    )
    return out


OVF = """<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References><File ovf:href="{vmdk}" ovf:id="file1" ovf:size="{vmdk_size}"/></References>
  <DiskSection><Info>disks</Info>
    <Disk ovf:capacity="{capacity}" ovf:diskId="vmdisk1" ovf:fileRef="file1"
      ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="systemvm"><Info>vm</Info></VirtualSystem>
</Envelope>
"""


def make_ova(work: Path, size: int = 8 * MIB, name: str = "systemvm") -> Path:
    """OVF first, manifest, then a streamOptimized VMDK in a ustar archive (the order CloudStack uses)."""
    raw = make_raw(work / "disk.raw", size)
    vmdk = work / f"{name}-disk1.vmdk"
    subprocess.run(
        ["qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", str(raw), str(vmdk)],
        check=True,
    )
    ovf = work / f"{name}.ovf"
    ovf.write_text(OVF.format(vmdk=vmdk.name, vmdk_size=vmdk.stat().st_size, capacity=size))
    manifest = work / f"{name}.mf"
    manifest.write_text(
        "".join(f"SHA256({p.name})= {hashlib.sha256(p.read_bytes()).hexdigest()}\n" for p in (ovf, vmdk))
    )
    ova = work / f"{name}.ova"
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as archive:
        for member in (ovf, manifest, vmdk):
            archive.add(member, arcname=member.name)
    return ova


def compress(source: Path, kind: str, out: Path) -> Path:
    data = source.read_bytes()
    if kind == "bz2":
        out.write_bytes(bz2.compress(data, 9))
    elif kind == "gzip":
        out.write_bytes(gzip.compress(data))
    elif kind == "xz":
        out.write_bytes(lzma.compress(data))
    elif kind == "zip":
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(source, arcname=source.name)
    else:
        out.write_bytes(data)
    return out


def publish(artifact: Path, with_sums: bool = True) -> Path:
    """Write sha512sum.txt next to the artifact, as the export does."""
    if with_sums:
        digest = hashlib.sha512(artifact.read_bytes()).hexdigest()
        with open(artifact.parent / "sha512sum.txt", "a") as handle:
            handle.write(f"{digest}  {artifact.name}\n")
    return artifact


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with mode, size and content hash: equal snapshots = byte-for-byte equal."""
    result: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
            result[str(path.relative_to(root))] = (
                info.st_mode,
                info.st_size if path.is_file() else 0,
                digest,
            )
    return result


def qemu_virtual_size(path: Path) -> int:
    import json

    done = subprocess.run(["qemu-img", "info", "--output=json", str(path)], capture_output=True, check=True)
    return int(json.loads(done.stdout)["virtual-size"])


def cloudstack_expected_properties(
    ext: str, template_id: int, installed: Path, filename_pattern: str = r"[0-9a-f-]{36}"
) -> dict[str, str]:
    """What CloudStack 4.x writes into template.properties for the same input, derived from its scripts.

    scripts/storage/secondary/cloud-install-sys-tmplt calls createtmplt.sh with ``-d 'SystemVM Template'``
    and without ``-h``; createtmplt.sh decompresses, moves the file to ``<uuid>.<ext>`` and writes
    ``filename=<uuid>.<ext>``, ``description=SystemVM Template``, ``hvm=false`` (its default) and ``size=``
    the decompressed file's ``ls -l`` size. cloud-install-sys-tmplt then appends ``<ext>=true``,
    ``id=<id>``, ``public=true``, ``<ext>.filename``, ``uniquename=routing-<id>``, ``<ext>.virtualsize``
    and ``virtualsize`` (``qemu-img info``'s virtual size for qcow2, the file size otherwise) and
    ``<ext>.size`` (file size).
    The uuid is random there (``uuidgen``), so only its shape is compared (``filename_pattern``).
    """
    size = installed.stat().st_size
    virtual = qemu_virtual_size(installed) if ext == "qcow2" else size
    return {
        "filename": f"re:{filename_pattern}\\.{ext}",
        "description": "SystemVM Template",
        "hvm": "false",
        "size": str(size),
        ext: "true",
        "id": str(template_id),
        "public": "true",
        f"{ext}.filename": f"re:{filename_pattern}\\.{ext}",
        "uniquename": f"routing-{template_id}",
        f"{ext}.virtualsize": str(virtual),
        "virtualsize": str(virtual),
        f"{ext}.size": str(size),
    }


def matches(expected: str, actual: str) -> bool:
    return bool(re.fullmatch(expected[3:], actual)) if expected.startswith("re:") else expected == actual


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    directory: Path
    honor_range = True
    cut_after: int | None = None  # bytes sent per GET before the connection is dropped
    cuts_left = 0  # how many GETs are cut (then the rest are served whole)
    requests: list[str]

    def log_message(self, *args: object) -> None:
        pass

    def _file(self) -> Path | None:
        path = self.directory / self.path.lstrip("/").split("?")[0]
        return path if path.is_file() else None

    def do_HEAD(self) -> None:
        path = self._file()
        if path is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.send_header("Accept-Ranges", "bytes" if self.honor_range else "none")
        self.end_headers()

    def do_GET(self) -> None:
        self.requests.append(f"GET {self.path} {self.headers.get('Range', '')}")
        path = self._file()
        if path is None:
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and self.honor_range:
            start = int(match.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cls = type(self)
        if cls.cut_after is not None and cls.cuts_left > 0 and path.name != "sha512sum.txt":
            cls.cuts_left -= 1
            self.wfile.write(body[: cls.cut_after])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


class ArtifactServer:
    """``with ArtifactServer(dir, cut_after=N, cuts=K, honor_range=True) as base_url:``"""

    def __init__(
        self, directory: Path, cut_after: int | None = None, cuts: int = 0, honor_range: bool = True
    ):
        self.handler = type(
            "Handler",
            (_Handler,),
            {
                "directory": directory,
                "cut_after": cut_after,
                "cuts_left": cuts,
                "honor_range": honor_range,
                "requests": [],
            },
        )
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self.handler)

    @property
    def requests(self) -> list[str]:
        return self.handler.requests

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_port}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
