"""Streaming decompression for seeding: bzip2, gzip, xz, zip (first member) or plain, chosen by magic bytes.

Every decompressor is fed compressed chunks and yields bounded output chunks, so a few compressed bytes that
expand to gigabytes of zeros never sit in memory at once. Concatenated streams (``pbzip2``, ``cat a.gz b.gz``,
``xz`` multi-stream) are followed to the end, as ``bunzip2``/``gunzip`` do.
"""

from __future__ import annotations

import bz2
import lzma
import os
import struct
import zlib
from collections.abc import Iterator
from typing import BinaryIO, Protocol

from systemvm.errors import UserError
from systemvm.export.detect import compression_of

OUT_CHUNK = 1 << 20  # at most this many decompressed bytes per yielded chunk
SPARSE_BLOCK = 64 << 10

__all__ = ["Decompressor", "SparseWriter", "compression_of"]


class _Engine(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    @property
    def needs_input(self) -> bool: ...

    def decompress(self, data: bytes, max_length: int = ...) -> bytes: ...


class _ZlibEngine:
    """zlib's decompressobj behind the bz2/lzma interface (``needs_input`` via ``unconsumed_tail``)."""

    def __init__(self, wbits: int) -> None:
        self._obj = zlib.decompressobj(wbits)
        self._tail = b""

    @property
    def eof(self) -> bool:
        return self._obj.eof

    @property
    def unused_data(self) -> bytes:
        return self._obj.unused_data

    @property
    def needs_input(self) -> bool:
        return not self._obj.unconsumed_tail

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        data = self._obj.unconsumed_tail + data
        return self._obj.decompress(data, max_length if max_length > 0 else 0)


def _new_engine(kind: str) -> _Engine:
    if kind == "bz2":
        return bz2.BZ2Decompressor()
    if kind == "xz":
        return lzma.LZMADecompressor()
    if kind == "gzip":
        return _ZlibEngine(31)
    if kind == "deflate":
        return _ZlibEngine(-15)
    raise ValueError(kind)


class Decompressor:
    """Feed compressed chunks with :meth:`feed`, get decompressed chunks; :meth:`finish` checks the end."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._engine: _Engine | None = None if kind in ("none", "zip") else _new_engine(kind)
        self._zip = _ZipFirstMember() if kind == "zip" else None
        self._done = False  # the (last) stream ended; only padding may follow

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self.kind == "none":
            if data:
                yield data
            return
        if self._zip is not None:
            yield from self._zip.feed(data)
            return
        yield from self._feed_engine(data)

    def _feed_engine(self, data: bytes) -> Iterator[bytes]:
        while True:
            if self._engine is None:  # a previous stream ended: is another one starting?
                if self.kind == "deflate":
                    return  # a zip member: what follows is zip bookkeeping
                data = data.lstrip(b"\x00") if self.kind == "gzip" else data
                if not data:
                    return
                if compression_of(data) != self.kind and len(data) >= 6:
                    raise UserError(
                        f"unexpected data after the end of the {self.kind} stream: "
                        "the artifact is damaged; download it again"
                    )
                self._engine = _new_engine(self.kind)
            try:
                out = self._engine.decompress(data, OUT_CHUNK)
            except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
                raise UserError(
                    f"{self.kind} data is corrupt ({exc}): the artifact is damaged; fetch it again"
                ) from None
            data = b""
            if out:
                yield out
            if self._engine.eof:
                data = self._engine.unused_data
                self._engine = None
                self._done = True
                continue
            if getattr(self._engine, "needs_input", True):
                return

    def finish(self) -> Iterator[bytes]:
        """Drain what is buffered and fail when the compressed stream stopped early (truncated file)."""
        if self._zip is not None:
            self._zip.check_complete()
            return
        if self.kind == "none":
            return
        while self._engine is not None and not getattr(self._engine, "needs_input", True):
            yield from self._feed_engine(b"")
        if self._engine is not None:
            raise UserError(f"the {self.kind} stream ends early: the artifact is truncated; fetch it again")

    @property
    def ended(self) -> bool:
        return self._done and self._engine is None


class _ZipFirstMember:
    """Stream the first member of a zip archive from its local header (no central directory needed)."""

    def __init__(self) -> None:
        self._buf = b""
        self._header_done = False
        self._inflater: Decompressor | None = None
        self._stored_left: int | None = None
        self._finished = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._finished:
            return
        if not self._header_done:
            self._buf += data
            if len(self._buf) < 30:
                return
            sig, _ver, flags, method, _t, _d, _crc, csize, _usize, nlen, xlen = struct.unpack(
                "<IHHHHHIIIHH", self._buf[:30]
            )
            if sig != 0x04034B50:
                raise UserError("zip archive does not start with a local file header: repack it with 'zip'")
            if len(self._buf) < 30 + nlen + xlen:
                return
            data = self._buf[30 + nlen + xlen :]
            self._buf = b""
            self._header_done = True
            if method == 8:
                self._inflater = Decompressor("deflate")
            elif method == 0 and not flags & 0x08 and csize != 0xFFFFFFFF:
                self._stored_left = csize
            else:
                raise UserError(
                    f"zip member uses compression method {method}, which cannot be streamed: "
                    "repack it with 'zip' (deflate) or use bzip2/gzip/xz"
                )
        if self._inflater is not None:
            yield from self._inflater.feed(data)
            if self._inflater.ended:
                self._finished = True
        elif self._stored_left is not None:
            take = data[: self._stored_left]
            self._stored_left -= len(take)
            if take:
                yield take
            if self._stored_left == 0:
                self._finished = True

    def check_complete(self) -> None:
        if not self._finished:
            raise UserError("the zip archive ends early: the artifact is truncated; fetch it again")


class SparseWriter:
    """Write a stream to a file, seeking over all-zero blocks so raw images stay sparse."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self._pending = b""
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        data = self._pending + data if self._pending else data
        usable = len(data) - len(data) % SPARSE_BLOCK
        view = memoryview(data)
        zero = bytes(SPARSE_BLOCK)
        for start in range(0, usable, SPARSE_BLOCK):
            block = view[start : start + SPARSE_BLOCK]
            if block == zero:
                self._handle.seek(SPARSE_BLOCK, os.SEEK_CUR)
            else:
                self._handle.write(block)
        self._pending = bytes(view[usable:])

    def close(self) -> None:
        if self._pending:
            self._handle.write(self._pending)
            self._pending = b""
        self._handle.truncate(self.size)
        self._handle.flush()
        os.fsync(self._handle.fileno())
