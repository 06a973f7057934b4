"""The CloudStack line a template is built for, chosen by the template version: one frozen profile per line.

``profile_for("4.22.0")`` is the 4.22 profile, ``profile_for("4.20.1")`` the 4.20 one; any other line is
refused with one line naming the supported ones. Every phase that behaves differently per line asks the
profile (the build's environment for the elements, metadata.ini and the checksum lists, the release diff,
seeding, the appliance checks) instead of comparing versions itself, so a line's contract is read here, once.

What differs between 4.20 and 4.22, each read from CloudStack's own files (paths in apache/cloudstack unless
a fork is named; the commit a file was read at after ``@``):

- **checksums** (PR 11134): ``engine/schema/templateConfig.sh`` builds metadata.ini's ``checksum`` from
  ``md5sum.txt`` in 4.20 (@a58b94f) and from ``sha512sum.txt`` in 4.22 (d4m14ndx/cloudstack@fab23ae), and
  ``SystemVmTemplateRegistration.java`` compares it with ``DigestHelper.calculateChecksum`` of the file (MD5
  in 4.20, SHA-512 after PR 11134: ablecloud-team/ablestack-cloud@37ef51c ``DigestHelper.java``).
- **scripts signature** (PR 11134): ``tools/appliance/systemvmtemplate/scripts/
  configure_systemvm_services.sh`` writes the ``md5sum`` of ``/usr/share/cloud/cloud-scripts.tgz`` in 4.20
  (weizhouapache/cloudstack@64bc52a) and its ``sha512sum`` in 4.22 (Panabordee/cloudstack-dbass@0888ef7 and
  the index's id 58407075183, both ``CLOUDSTACK_RELEASE=4.22.0``); ``schema-42100to42200.sql`` @671d8ad
  widens ``domain_router.scripts_version`` to 128 characters for it.
- **metadata.ini**: 4.20.0's registration reads ``[kvm]``, 4.20.1 and later ``[kvm-<arch>]`` without a
  fallback for KVM (``SystemVmTemplateRegistration.java``, shapeblue/cloudstack@5482ab9 and
  d4m14ndx/cloudstack@0bd0bc22); ``[default] version`` is four-part in 4.22
  (``engine/schema/test_templateConfig.sh`` @e1b7a2f).
- **vm_template.checksum**: registration stores the metadata checksum as given in 4.20 (an MD5 hex) and with
  its algorithm prefixed in 4.22 (``DigestHelper.prependAlgorithm``, PR 12165, d4m14ndx/cloudstack@0bd0bc22).
- **system VM user data** (PR 11654): 4.22's ``systemvm/debian/opt/cloud/bin/setup/postinit.sh`` (the
  index's id 4753745239) runs cloud-init's NoCloud stages once when the command line has ``userdata=``
  (:mod:`systemvm.guest.userdata`); 4.20's (@9a1dc2f) has no such step.

Shared by both lines (so one package set and one bootstrap cache serve both): cloud-init installed with its
Recommends and left disabled (``/etc/cloud/cloud-init.disabled``, ``datasource_list: ['CloudStack']``) as both
lines' ``install_systemvm_packages.sh`` and ``configure_systemvm_services.sh`` do, and the release line
``Cloudstack Release <version> <date>``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path
from typing import Any

from systemvm.defaults import DEFAULT_VERSION
from systemvm.errors import UserError

_LINE_OF = re.compile(r"^(\d+)\.(\d+)\.\d+")
_THREE_PART = re.compile(r"^\d+\.\d+\.\d+$")


@dataclasses.dataclass(frozen=True)
class CloudStackProfile:
    """What a template of one CloudStack line must be and publish (see the module docstring for sources)."""

    line: str  # "4.22": the management server release line the template is for
    checksum: str  # hashlib name of metadata.ini's checksum (what registration compares)
    checksum_list: str  # the listing templateConfig.sh reads that checksum from
    scripts_digest: str  # hashlib name of /var/cache/cloud/cloud-scripts-signature
    kvm_plain_section: bool  # also write [kvm] beside [kvm-x86_64] (what 4.20.0's registration reads)
    four_part_metadata_version: bool  # [default] version = x.y.z.s, as templateConfig.sh writes it
    userdata: bool  # the boot runs cloud-init's NoCloud stages from the command line's userdata= key
    stored_checksum_prefix: str  # what registration puts before the hex digest in vm_template.checksum
    cloud_init_datasources: tuple[str, ...] = ("CloudStack",)  # /etc/cloud/cloud.cfg.d/cloudstack.cfg

    @property
    def scripts_digest_command(self) -> str:
        """The coreutils program that prints the signature's digest (``md5sum``, ``sha512sum``)."""
        return f"{self.scripts_digest}sum"

    @property
    def scripts_digest_length(self) -> int:
        """Hex digits of a signature of this line (32 for MD5, 128 for SHA-512)."""
        return hashlib.new(self.scripts_digest).digest_size * 2

    @property
    def checksum_length(self) -> int:
        return hashlib.new(self.checksum).digest_size * 2

    def digest(self, data: bytes) -> str:
        """The signature of ``data`` (a cloud-scripts.tgz): the hex digest alone, as images record it."""
        return hashlib.new(self.scripts_digest, data).hexdigest()

    def file_digest(self, path: Path) -> str:
        """:meth:`digest` of a file, read in chunks."""
        digest = hashlib.new(self.scripts_digest)
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()

    def metadata_version(self, version: str) -> str:
        """metadata.ini's ``[default] version`` for ``version`` (4.22: ``4.22.0`` -> ``4.22.0.0``)."""
        if self.four_part_metadata_version and _THREE_PART.match(version):
            return f"{version}.0"
        return version

    def stored_checksum(self, hexdigest: str) -> str:
        """``vm_template.checksum`` as the line's registration stores a template's digest (in ``checksum``'s
        algorithm): MD5 hex for 4.20; ``{SHA-512}`` and the hex for 4.22 (PR 12165: 4.22.0 stored the hex
        alone, which CloudStack then read as an MD5, issue 12042)."""
        return f"{self.stored_checksum_prefix}{hexdigest}"

    def build_environment(self) -> dict[str, str]:
        """What the elements read (set by :mod:`systemvm.build.image`)."""
        return {
            "SYSTEMVM_CLOUDSTACK_LINE": self.line,
            "SYSTEMVM_SCRIPTS_DIGEST": self.scripts_digest,
            "SYSTEMVM_CLOUD_INIT_DATASOURCES": ",".join(self.cloud_init_datasources),
        }

    def record(self) -> dict[str, Any]:
        """The build manifest's ``cloudstack_profile``: later phases (export, checks, diff) read it back."""
        return {
            "line": self.line,
            "checksum": self.checksum,
            "checksum_list": self.checksum_list,
            "scripts_digest": self.scripts_digest,
            "kvm_plain_section": self.kvm_plain_section,
            "four_part_metadata_version": self.four_part_metadata_version,
            "userdata": self.userdata,
            "stored_checksum_prefix": self.stored_checksum_prefix,
            "cloud_init_datasources": list(self.cloud_init_datasources),
        }


LINES: dict[str, CloudStackProfile] = {
    "4.20": CloudStackProfile(
        line="4.20",
        checksum="md5",
        checksum_list="md5sum.txt",
        scripts_digest="md5",
        kvm_plain_section=True,
        four_part_metadata_version=False,
        userdata=False,
        stored_checksum_prefix="",
    ),
    "4.22": CloudStackProfile(
        line="4.22",
        checksum="sha512",
        checksum_list="sha512sum.txt",
        scripts_digest="sha512",
        kvm_plain_section=False,
        four_part_metadata_version=True,
        userdata=True,
        stored_checksum_prefix="{SHA-512}",
    ),
}
SUPPORTED = tuple(LINES)


def line_of(version: str) -> str | None:
    """``4.22.0`` -> ``4.22``; None when ``version`` does not start with X.Y.Z."""
    match = _LINE_OF.match(version.strip())
    return f"{match.group(1)}.{match.group(2)}" if match else None


def profile_for(version: str) -> CloudStackProfile:
    """The profile of the line ``version`` belongs to; a UserError (one line, exit 2) for any other line."""
    line = line_of(version)
    if line in LINES:
        return LINES[line]
    named = f"line {line}" if line else "no CloudStack line"
    raise UserError(
        f"version '{version}' is for {named}, which is not supported: give a version of "
        f"{' or '.join(SUPPORTED)} (e.g. --version {DEFAULT_VERSION}; CloudStack 4.23 runs the 4.22.0 "
        "template)"
    )


def profile_from_record(record: dict[str, Any] | None, version: str | None = None) -> CloudStackProfile:
    """The profile a build manifest recorded (``cloudstack_profile``); for a manifest from before it was
    recorded, the profile of its version."""
    line = (record or {}).get("line")
    if isinstance(line, str) and line in LINES:
        return LINES[line]
    if version:
        return profile_for(version)
    raise UserError("the build manifest names no CloudStack line or version: rebuild the template")


def manifest_profile(manifest: dict[str, Any]) -> CloudStackProfile:
    """The profile of a build manifest (its ``cloudstack_profile``, else its ``version``)."""
    return profile_from_record(manifest.get("cloudstack_profile"), manifest.get("version"))


__all__ = [
    "LINES",
    "SUPPORTED",
    "CloudStackProfile",
    "line_of",
    "manifest_profile",
    "profile_for",
    "profile_from_record",
]
