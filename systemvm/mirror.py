"""The Debian mirror: from an option or SYSTEMVM_DEBIAN_MIRROR, else the one the host's apt uses."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from systemvm.errors import UserError

APT_SOURCES = Path("/etc/apt")


def _source_uris(apt_dir: Path) -> list[str]:
    uris: list[str] = []
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in files:
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                words = line.split("#", 1)[0].split()
                if len(words) >= 3 and words[0] == "deb":
                    uris.append(next(w for w in words[1:] if not w.startswith("[")))
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        text = path.read_text(errors="replace")
        for stanza in re.split(r"\n\s*\n", text):
            if re.search(r"^Enabled:\s*no", stanza, re.M | re.I):
                continue
            match = re.search(r"^URIs:\s*(.+)$", stanza, re.M)
            if match and re.search(r"^Types:.*\bdeb\b", stanza, re.M):
                uris.extend(match.group(1).split())
    return uris


def host_mirror(apt_dir: Path = APT_SOURCES) -> str:
    """The host's main Debian mirror (a URI ending in /debian that is not the security archive)."""
    for uri in _source_uris(apt_dir):
        if uri.rstrip("/").endswith("/debian") and "security" not in uri:
            return uri.rstrip("/")
    raise UserError(
        f"no Debian mirror found in {apt_dir}/sources.list*: pass --mirror URL or set SYSTEMVM_DEBIAN_MIRROR"
    )


def debian_mirror(option: str | None = None, apt_dir: Path = APT_SOURCES) -> str:
    mirror = option or os.environ.get("SYSTEMVM_DEBIAN_MIRROR") or host_mirror(apt_dir)
    parts = urlsplit(mirror)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"mirror '{mirror}' is not an http(s) URL: pass e.g. --mirror http://HOST/debian")
    return mirror.rstrip("/")


def security_mirror(mirror: str) -> str:
    """Same host, path ``debian-security`` (what every Debian mirror network serves beside ``debian``)."""
    parts = urlsplit(mirror)
    path = parts.path.rstrip("/")
    parent = path.rsplit("/", 1)[0]  # drop the last element, normally "debian"
    return urlunsplit((parts.scheme, parts.netloc, f"{parent}/debian-security", "", ""))
