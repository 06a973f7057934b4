"""Build manifests as the build writes them, from dpkg-query and apt-origins lines (test data)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from systemvm import naming, profile
from systemvm.build import image

EPOCH = 1_700_000_000

# dpkg-query -W -f '${Package}\t${Version}\t${Architecture}\t${source:Package}\t${source:Version}\n'
PACKAGES_OLD = """\
bash\t5.2.15-2+b2\tamd64\tbash\t5.2.15-2
libc6\t2.36-9+deb12u9\tamd64\tglibc\t2.36-9+deb12u9
libssl3\t3.0.15-1~deb12u1\tamd64\topenssl\t3.0.15-1~deb12u1
linux-image-6.1.0-56-amd64\t6.1.190-1\tamd64\tlinux-signed-amd64\t6.1.190+1
nano\t7.2-1\tamd64\tnano\t7.2-1
tzdata\t2025a-0+deb12u1\tall\ttzdata\t2025a-0+deb12u1
"""
PACKAGES_NEW = """\
bash\t5.2.15-2+b2\tamd64\tbash\t5.2.15-2
libc6\t2.36-9+deb12u10\tamd64\tglibc\t2.36-9+deb12u10
libssl3\t3.0.16-1~deb12u1\tamd64\topenssl\t3.0.16-1~deb12u1
linux-image-6.1.0-57-amd64\t6.1.192-3\tamd64\tlinux-signed-amd64\t6.1.192+3
tzdata\t2025b-0+deb12u1\tall\ttzdata\t2025b-0+deb12u1
zstd\t1.5.4+dfsg2-5\tamd64\tlibzstd\t1.5.4+dfsg2-5
"""
# name, version, architecture, suite (elements/systemvm-base/post-install.d/89-record-apt-origins)
ORIGINS_NEW = """\
bash\t5.2.15-2+b2\tamd64\tbookworm
libc6\t2.36-9+deb12u10\tamd64\tbookworm-updates
libssl3\t3.0.16-1~deb12u1\tamd64\tbookworm-security
linux-image-6.1.0-57-amd64\t6.1.192-3\tamd64\tbookworm-security
tzdata\t2025b-0+deb12u1\tall\tbookworm-updates
zstd\t1.5.4+dfsg2-5\tamd64\tbookworm
"""


def make_manifest(
    packages_tsv: str,
    origins_tsv: str = "",
    *,
    version: str = "4.20.0",
    flavour: str = "amd64",
    kernel: str = "6.1.0-57-amd64",
    commit: str = "0123456789abcdef0123456789abcdef01234567",
    artifacts: dict[str, dict[str, Any]] | None = None,
    recorded_profile: bool = False,
) -> dict[str, Any]:
    """``recorded_profile``: the manifest records its CloudStack profile and scripts signature, as builds do
    since the profiles (older manifests name only their version)."""
    records = image.parse_package_records(packages_tsv)
    image.add_apt_origins(records, origins_tsv)
    extra: dict[str, Any] = {}
    if recorded_profile:
        line = profile.profile_for(version)
        extra["cloudstack_profile"] = line.record()
        extra["scripts_signature"] = {"algorithm": line.scripts_digest, "digest": line.digest(b"scripts")}
    return {
        **extra,
        "flavour": flavour,
        "arch": naming.ARCH_OF[flavour],
        "version": version,
        "debian_release": "bookworm",
        "kernel": kernel,
        "packages": {name: r["version"] for name, r in records.items()},
        "package_records": records,
        "apt_origin_method": image.APT_ORIGIN_METHOD,
        "git_commit": commit,
        "source_date_epoch": EPOCH,
        "build_seconds": 61.5,
        "artifacts": artifacts or {},
    }


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{naming.stem(manifest['version'], manifest['flavour'])}.manifest.json"
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path
