"""Where a seeded artifact comes from (a local file or an HTTP(S) URL, read in chunks), its checksum and what
it is (version, architecture, CloudStack line).

HTTP downloads resume with a ``Range`` request when the connection breaks (up to ``retries`` times in one
run); a server that ignores ``Range`` is handled by skipping the bytes already received. The expected sha512
comes from ``--sha512``, else ``sha512sum.txt`` next to the artifact, else the ``checksum`` of the
``metadata.ini`` section whose ``filename`` is the artifact: SHA-512 in a 4.22 metadata.ini (128 hex digits,
also with a ``{SHA-512}`` prefix), MD5 in a 4.20 one (32 hex digits).

What the artifact is comes from its name (``systemvmtemplate-<version>-<arch>-<kind>``), else from that
metadata.ini section (``templatename``, ``arch``): seeding then picks the template of that architecture and
stores the checksum as that version's CloudStack line registers it (:mod:`systemvm.profile`).
"""

from __future__ import annotations

import configparser
import dataclasses
import hashlib
import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import requests
import urllib3

from systemvm import naming
from systemvm.errors import UserError, ini_problem
from systemvm.profile import CloudStackProfile, profile_for
from systemvm.progress import say

CHUNK = 1 << 20
HEX = re.compile(r"^[0-9a-fA-F]+$")


@dataclasses.dataclass
class Expected:
    algorithm: str  # sha512 | md5
    hexdigest: str
    origin: str  # where it was found, for messages

    def new_hash(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)


class FileSource:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"template image file {self.path} doesn't exist: check the path given with -f")
        self.name = self.path.name
        self.size: int | None = self.path.stat().st_size
        self.display = str(self.path)

    def chunks(self) -> Iterator[bytes]:
        with open(self.path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk

    def sibling_text(self, name: str) -> str | None:
        path = self.path.parent / name
        return path.read_text(errors="replace") if path.is_file() else None


class HttpSource:
    def __init__(self, url: str, retries: int = 5, backoff: float = 1.0, timeout: float = 60.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UserError(f"'{url}' is not an http(s) URL: give -u http(s)://host/path or -f FILE")
        self.url = url
        self.name = Path(urllib.parse.unquote(parsed.path)).name or "artifact"
        self.display = url
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.session = requests.Session()
        self.resumes = 0  # how many times a broken download was resumed (tests and bench read it)
        self.size: int | None = None
        try:
            head = self.session.head(url, allow_redirects=True, timeout=timeout)
        except requests.RequestException as exc:
            raise UserError(f"cannot reach {url}: {_short(exc)}; check the URL and the network") from None
        if head.status_code >= 400:
            raise UserError(f"{url} answered HTTP {head.status_code}: check the URL")
        length = head.headers.get("Content-Length")
        if length and length.isdigit() and "Content-Encoding" not in head.headers:
            self.size = int(length)

    def chunks(self) -> Iterator[bytes]:
        offset = 0
        failures = 0
        while True:
            headers = {"Accept-Encoding": "identity"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            try:
                with self.session.get(self.url, stream=True, headers=headers, timeout=self.timeout) as reply:
                    if reply.status_code >= 400:
                        raise UserError(f"{self.url} answered HTTP {reply.status_code}: check the URL")
                    skip = offset if reply.status_code != 206 else 0
                    if reply.status_code == 206 and not reply.headers.get("Content-Range", "").startswith(
                        f"bytes {offset}-"
                    ):
                        raise UserError(
                            f"{self.url}: the server resumed at the wrong offset; try again later"
                        )
                    for chunk in reply.raw.stream(CHUNK, decode_content=False):
                        if skip:
                            cut = min(skip, len(chunk))
                            chunk, skip = chunk[cut:], skip - cut
                            if not chunk:
                                continue
                        offset += len(chunk)
                        failures = 0
                        yield chunk
                    if self.size is not None and offset < self.size:
                        raise urllib3.exceptions.ProtocolError(
                            f"connection closed at {offset} of {self.size}"
                        )
                    return
            except (requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError) as exc:
                failures += 1
                if failures > self.retries:
                    raise UserError(
                        f"download of {self.url} broke off at byte {offset} {failures} times in a row "
                        f"({_short(exc)}): check the server, then run the command again"
                    ) from None
                self.resumes += 1
                say(f"    download broke off at byte {offset} ({_short(exc)}); resuming")
                time.sleep(self.backoff * failures)

    def sibling_text(self, name: str) -> str | None:
        url = urllib.parse.urljoin(self.url, name)
        try:
            reply = self.session.get(url, timeout=self.timeout)
        except requests.RequestException:
            return None
        return reply.text if reply.status_code == 200 else None


def _system_reason(exc: BaseException) -> str | None:
    """The innermost OSError's words in an exception's chain (requests wraps urllib3 wraps the socket's)."""
    stack, seen, plain = [exc], set(), None
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError):
            if current.strerror:
                return current.strerror
            if plain is None and current.args and isinstance(current.args[0], str):
                plain = current.args[0]  # http.client's RemoteDisconnected: "Remote end closed ..."
        stack += [a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]
        for attr in ("reason", "__cause__", "__context__"):
            linked = getattr(current, attr, None)
            if isinstance(linked, BaseException):
                stack.append(linked)
    return plain


def _short(exc: BaseException) -> str:
    """Why a request failed, in a few whole words: the system's reason (``Connection refused``, ``Name or
    service not known``) rather than requests' nested retry message, which a cut would end mid-word."""
    if isinstance(exc, requests.Timeout):
        return "no answer in time"
    reason = _system_reason(exc)
    if reason:
        return reason.strip().rstrip(".")
    text = str(exc)
    first = text.splitlines()[0] if text else type(exc).__name__
    if len(first) <= 160:
        return first
    return first[:160].rsplit(" ", 1)[0] + " ..."


def open_source(
    file: str | None, url: str | None, retries: int = 5, backoff: float = 1.0
) -> FileSource | HttpSource:
    if bool(file) == bool(url):
        raise UserError("give exactly one of -f FILE or -u URL: the template to seed")
    return FileSource(file) if file else HttpSource(url or "", retries=retries, backoff=backoff)


def parse_sha512(value: str, origin: str = "--sha512") -> Expected:
    text = value.strip()
    if text.upper().startswith("{SHA-512}"):
        text = text[len("{SHA-512}") :]
    if len(text) != 128 or not HEX.match(text):
        raise UserError(f"{origin}: '{value}' is not a sha512 (128 hex digits): copy it from sha512sum.txt")
    return Expected("sha512", text.lower(), origin)


def from_sumfile(text: str, name: str, origin: str) -> Expected | None:
    """The digest listed for ``name`` in ``sha512sum``/``md5sum`` output (``HEX  name`` or ``HEX *name``)."""
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and parts[1].lstrip("*").strip() == name and HEX.match(parts[0]):
            return parse_sha512(parts[0], origin)
    return None


def from_metadata(text: str, name: str, origin: str) -> Expected | None:
    """The ``checksum`` of the metadata.ini section whose ``filename`` is ``name``."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        raise UserError(f"{origin}: {ini_problem(exc)}: fix it or give --sha512") from None
    for section in parser.sections():
        if parser.get(section, "filename", fallback="").strip() == name:
            value = parser.get(section, "checksum", fallback="").strip()
            if value.upper().startswith("{SHA-512}") or len(value) == 128:
                return parse_sha512(value, f"{origin} [{section}]")
            if len(value) == 32 and HEX.match(value):
                return Expected("md5", value.lower(), f"{origin} [{section}]")
            raise UserError(
                f"{origin} [{section}] checksum '{value}' is neither sha512 nor md5: fix metadata.ini"
            )
    return None


def expected_checksum(source: FileSource | HttpSource, explicit: str | None) -> Expected | None:
    """The checksum the artifact must have, or None when none is published next to it."""
    if explicit:
        return parse_sha512(explicit)
    for name, reader in (("sha512sum.txt", from_sumfile), ("metadata.ini", from_metadata)):
        text = source.sibling_text(name)
        if text is not None:
            found = reader(text, source.name, f"{name} next to {source.name}")
            if found:
                return found
    return None


@dataclasses.dataclass(frozen=True)
class ArtifactInfo:
    """What a seeded artifact is, as far as its name or its metadata.ini section tells."""

    version: str | None
    arch: str | None
    origin: str  # where it was read, for messages

    @property
    def profile(self) -> CloudStackProfile | None:
        """The CloudStack line of the version, None when unknown or not a supported line."""
        if not self.version:
            return None
        try:
            return profile_for(self.version)
        except UserError:
            return None

    def template_name(self, hypervisor: str) -> str | None:
        """The name CloudStack's registration gives this template (``engine/schema/templateConfig.sh``'s
        ``templatename``: ``systemvm-<hypervisor>-<version>-<arch>``)."""
        if not (self.version and self.arch):
            return None
        return f"systemvm-{hypervisor}-{self.version}-{self.arch}"


_TEMPLATE_NAME = re.compile(r"^systemvm-[a-z0-9]+-(?P<version>\d+\.\d+\.\d+\S*)-(?P<arch>[a-z0-9_]+)$")


def artifact_info(source: FileSource | HttpSource) -> ArtifactInfo:
    """Version and architecture of the artifact: from its file name, else its metadata.ini section."""
    parsed = naming.parse_export_name(source.name)
    if parsed is not None:
        return ArtifactInfo(parsed[0], parsed[1], f"the name {source.name}")
    text = source.sibling_text("metadata.ini")
    if text is not None:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(text)
        except configparser.Error:
            return ArtifactInfo(None, None, "nothing")
        for section in parser.sections():
            if parser.get(section, "filename", fallback="").strip() != source.name:
                continue
            match = _TEMPLATE_NAME.match(parser.get(section, "templatename", fallback="").strip())
            arch = parser.get(section, "arch", fallback="").strip() or (match and match.group("arch")) or None
            return ArtifactInfo(match and match.group("version"), arch, f"metadata.ini [{section}]")
    return ArtifactInfo(None, None, "nothing")
