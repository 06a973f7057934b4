"""Mirror selection: host apt sources (both formats), the derived security mirror, the index check."""

from __future__ import annotations

from pathlib import Path

import pytest

from systemvm.build import mirror
from systemvm.errors import UserError


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_deb822_sources_give_the_main_mirror(tmp_path: Path) -> None:
    write(
        tmp_path / "sources.list.d" / "debian.sources",
        "Types: deb\nURIs: http://mirror.example.net/debian\nSuites: bookworm\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example.net/debian-security\nSuites: bookworm-security\n",
    )
    assert mirror.host_mirror(tmp_path) == "http://mirror.example.net/debian"


def test_one_line_sources_and_options_are_understood(tmp_path: Path) -> None:
    line = "deb [arch=amd64 signed-by=/k.gpg] https://ftp.example.org/pub/debian/ bookworm main"
    write(tmp_path / "sources.list", f"# comment\n{line}\n")
    assert mirror.host_mirror(tmp_path) == "https://ftp.example.org/pub/debian"


def test_disabled_stanza_is_ignored(tmp_path: Path) -> None:
    write(
        tmp_path / "sources.list.d" / "x.sources",
        "Enabled: no\nTypes: deb\nURIs: http://off.example/debian\n\nTypes: deb\nURIs: http://on.example/debian\n",
    )
    assert mirror.host_mirror(tmp_path) == "http://on.example/debian"


def test_no_mirror_is_a_one_line_error_naming_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--mirror URL or set SYSTEMVM_DEBIAN_MIRROR"):
        mirror.host_mirror(tmp_path)


def test_option_beats_environment_beats_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "sources.list", "deb http://host.example/debian bookworm main\n")
    monkeypatch.setenv("SYSTEMVM_DEBIAN_MIRROR", "http://env.example/debian/")
    assert mirror.debian_mirror(None, tmp_path) == "http://env.example/debian"
    assert mirror.debian_mirror("http://opt.example/debian", tmp_path) == "http://opt.example/debian"
    monkeypatch.delenv("SYSTEMVM_DEBIAN_MIRROR")
    assert mirror.debian_mirror(None, tmp_path) == "http://host.example/debian"
    with pytest.raises(UserError, match="not an http"):
        mirror.debian_mirror("ftp://old.example/debian", tmp_path)


@pytest.mark.parametrize(
    ("main", "security"),
    [
        ("http://deb.debian.org/debian", "http://deb.debian.org/debian-security"),
        ("https://mirror.example/pub/debian", "https://mirror.example/pub/debian-security"),
    ],
)
def test_security_mirror_is_the_same_host_with_debian_security(main: str, security: str) -> None:
    assert mirror.security_mirror(main) == security


def test_release_index_sizes_are_read_from_the_sha256_section() -> None:
    release = (
        "Origin: Debian\nMD5Sum:\n 00 111 main/binary-i386/Packages.xz\n"
        "SHA256:\n aa 364028 main/binary-i386/Packages.xz\n bb 9 main/binary-amd64/Packages.xz\n"
    )
    assert mirror._index_record(release, "main/binary-i386/Packages.xz") == ("aa", 364028)
    assert mirror._index_record(release, "main/binary-arm64/Packages.xz") is None


def _serve(root: Path):
    """A plain HTTP server for ``root`` on 127.0.0.1 (a mirror with only the files a test writes)."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _suite(root: Path, by_hash: bool, body: bytes, announced: bytes) -> str:
    import hashlib

    digest = hashlib.sha256(announced).hexdigest()
    dists = root / "debian/dists/bookworm"
    (dists / "main/binary-amd64/by-hash/SHA256").mkdir(parents=True)
    (dists / "InRelease").write_text(
        "Origin: Debian\n" + ("Acquire-By-Hash: yes\n" if by_hash else "")
        + f"SHA256:\n {digest} {len(announced)} main/binary-amd64/Packages.xz\n"
    )  # fmt: skip
    target = dists / "main/binary-amd64" / (f"by-hash/SHA256/{digest}" if by_hash else "Packages.xz")
    target.write_bytes(body)
    return digest


@pytest.mark.parametrize("by_hash", [True, False])
def test_suite_index_names_the_package_set_and_catches_a_stale_index(tmp_path: Path, by_hash: bool) -> None:
    good = tmp_path / "good"
    digest = _suite(good, by_hash, b"x" * 100, b"x" * 100)
    server = _serve(good)
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/debian"
        assert mirror.suite_index(base, "bookworm", "amd64", None) == digest
        assert mirror.suite_index(base, "bookworm", "i386", None) is None  # not announced
        assert mirror.suite_index(base, "bookworm-security", "amd64", None) is None  # no such suite
    finally:
        server.shutdown()
    stale = tmp_path / "stale"
    _suite(stale, by_hash, b"x" * 90, b"x" * 100)  # the file is not what InRelease announces
    server = _serve(stale)
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/debian"
        assert mirror.suite_index(base, "bookworm", "amd64", None) is None
    finally:
        server.shutdown()
