"""The harness's stand-in for CloudStack's patch: agent.zip, cloud-scripts.tgz and patch-sysvms.sh.

``agent.zip`` holds ``_run.sh`` and ``agent.py`` of :mod:`systemvm.guest.testagent` (a small agent that
reports to the harness's management listener, see :mod:`systemvm.boot.listener`); ``cloud-scripts.tgz``
holds a marker file with the payload id and ``/opt/cloud/bin/keystore-setup`` (the file whose presence
CloudStack's ``patched.sh`` check waits for on secondary storage and console proxy VMs);
``patch-sysvms.sh`` performs the steps of CloudStack's patch, with the digest the targeted CloudStack line
compares (MD5 for 4.20, SHA-512 for 4.22). The archives are reproducible: the same payload id gives
byte-identical files (fixed times, owners and order).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import tarfile
import zipfile
from importlib import resources
from pathlib import Path

from systemvm.atomic import atomic_path

AGENT_FILES = resources.files("systemvm.guest.testagent")  # runs in the VM; packed here, on the host
SCRIPTS_MARKER = "opt/cloud/testpayload/PAYLOAD"  # where cloud-scripts.tgz puts its marker, under /
KEYSTORE_SETUP = "opt/cloud/bin/keystore-setup"
KEYSTORE_SETUP_TEXT = b"""#!/bin/sh
# The test payload's stand-in for CloudStack's keystore-setup: the agent of the test payload uses no keystore.
exit 0
"""
_FIXED_TIME = (2024, 1, 1, 0, 0, 0)


DIGESTS = ("md5", "sha512")  # what CloudStack's lines compare: md5sum (4.20), sha512sum (4.22)


@dataclasses.dataclass(frozen=True)
class Payload:
    agent_zip: Path
    cloud_scripts: Path
    patch_script: Path
    payload_id: str
    digest: str = "md5"

    def signature(self) -> str:
        """The digest of cloud-scripts.tgz: what the VM records and the version handshake compares."""
        return hashlib.new(self.digest, self.cloud_scripts.read_bytes()).hexdigest()

    def files(self) -> dict[str, Path]:
        """Name in /var/cache/cloud/ -> local file."""
        return {"agent.zip": self.agent_zip, "cloud-scripts.tgz": self.cloud_scripts,
                "patch-sysvms.sh": self.patch_script}  # fmt: skip


def agent_zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, mode in (("_run.sh", 0o755), ("agent.py", 0o644)):
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.external_attr = (0o100000 | mode) << 16
            info.create_system = 3  # Unix, so the mode bits mean something
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, (AGENT_FILES / name).read_bytes())
        conf = zipfile.ZipInfo("conf/agent.properties", date_time=_FIXED_TIME)
        conf.external_attr = 0o100644 << 16
        conf.create_system = 3
        archive.writestr(conf, "# filled from the boot command line by the image\nheartbeat=5\n")
    return buffer.getvalue()


def cloud_scripts_bytes(payload_id: str) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for directory in ("opt", "opt/cloud", "opt/cloud/bin", "opt/cloud/testpayload"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1704067200
            archive.addfile(info)
        for name, data, mode in (
            (KEYSTORE_SETUP, KEYSTORE_SETUP_TEXT, 0o755),
            (SCRIPTS_MARKER, f"{payload_id}\n".encode(), 0o644),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 1704067200
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def patch_script_bytes(digest: str) -> bytes:
    """patch-sysvms.sh computing the signature with ``digest`` (md5sum or sha512sum)."""
    if digest not in DIGESTS:
        raise ValueError(f"unknown digest {digest!r}: use one of {', '.join(DIGESTS)}")
    return (AGENT_FILES / "patch-sysvms.sh").read_bytes().replace(b"@DIGEST@", digest.encode())


def build_payload(out_dir: str | Path, payload_id: str = "test-payload-1", digest: str = "md5") -> Payload:
    """Write the three files into ``out_dir`` (created if missing) and return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    contents = {
        "agent.zip": agent_zip_bytes(),
        "cloud-scripts.tgz": cloud_scripts_bytes(payload_id),
        "patch-sysvms.sh": patch_script_bytes(digest),
    }
    for name, data in contents.items():
        with atomic_path(out / name) as tmp:
            tmp.write_bytes(data)
            tmp.chmod(0o755 if name.endswith(".sh") else 0o644)
    return Payload(out / "agent.zip", out / "cloud-scripts.tgz", out / "patch-sysvms.sh", payload_id, digest)
