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
                words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    uris.append(words[1])
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


def _index_record(inrelease: str, path: str) -> tuple[str, int] | None:
    """(SHA256, size) recorded for ``path`` in the SHA256 section of a Release/InRelease file."""
    in_sha256 = False
    for line in inrelease.splitlines():
        if not line.startswith(" "):
            in_sha256 = line.startswith("SHA256:")
            continue
        parts = line.split()
        if in_sha256 and len(parts) == 3 and parts[2] == path:
            return parts[0], int(parts[1])
    return None


def suite_index(base: str, suite: str, arch: str, proxy: str | None, timeout: float = 30.0) -> str | None:
    """The SHA256 of the suite's Packages.xz for ``arch`` when the mirror serves it consistently, else None.

    A mirror caught mid-sync (or a stale cache in front of it) serves an index apt rejects ("File has
    unexpected size"), which fails the whole build; checking first lets the build say so in one line.
    The digest names the suite's package set: the build's bootstrap cache is keyed by it.
    """
    import urllib.request

    handlers = [urllib.request.ProxyHandler({"http": proxy, "https": proxy} if proxy else {})]
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(f"{base}/dists/{suite}/InRelease", timeout=timeout) as response:
            inrelease = response.read().decode(errors="replace")
        index = f"main/binary-{arch}/Packages.xz"
        record = _index_record(inrelease, index)
        if record is None:
            return None
        # The path apt itself fetches: by hash when the suite offers it. A by-hash file never changes, so
        # the package cache keeps it and an unchanged rebuild does not download the index again.
        if re.search(r"^Acquire-By-Hash:\s*yes\s*$", inrelease, re.MULTILINE | re.IGNORECASE):
            index = f"main/binary-{arch}/by-hash/SHA256/{record[0]}"
        request = urllib.request.Request(f"{base}/dists/{suite}/{index}", method="GET")
        with opener.open(request, timeout=timeout) as response:
            actual = len(response.read())
    except OSError:
        return None
    return record[0] if actual == record[1] else None


def apt_sources(
    debian: str, release: str, arch: str, proxy: str | None, indexes: dict[str, str] | None = None
) -> tuple[str, list[str]]:
    """diskimage-builder's DIB_APT_SOURCES_CONF for ``release``, and the suites left out (with reason).

    The main suite must be consistent; ``-updates`` and ``-security`` are left out, with a warning the
    build prints and records, when the mirror serves them inconsistently for this architecture.
    ``indexes``, when given, receives each used suite's Packages.xz SHA256 (``"<base> <suite>"`` keys).
    """
    security = security_mirror(debian)
    suites = [("default", debian, release), ("updates", debian, f"{release}-updates"),
              ("security", security, f"{release}-security")]  # fmt: skip
    lines, skipped = [], []
    for name, base, suite in suites:
        digest = suite_index(base, suite, arch, proxy)
        if digest is not None:
            lines.append(f"{name}:deb {base} {suite} main")
            if indexes is not None:
                indexes[f"{base} {suite}"] = digest
        elif name == "default":
            raise UserError(
                f"the mirror {base} serves an inconsistent or missing {suite} index for {arch}: "
                "retry later or pass another --mirror"
            )
        else:
            skipped.append(f"{base} {suite}")
    return "\n".join(lines) + "\n", skipped
