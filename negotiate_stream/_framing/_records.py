"""Length-prefixed records: the one record parser behind MS-NNS data records and SASL security-layer buffers.

Both framings put a 32-bit length in front of each wrap token and nothing else::

    +------------------------------+--------------------------------------+
    | length (uint32, LE or BE)    | payload: ``length`` bytes of token   |
    +------------------------------+--------------------------------------+

They differ only in constants: the byte order of the length, the smallest and largest payload the receiver
accepts, the most plaintext the sender puts into one record, and the words of the error message. A subclass sets
those; everything that reads or writes a record lives here once.

The parser is a pure function of a buffer and an offset, so the caller owns the buffer: the Connection keeps one
receive buffer for handshake messages and records alike and unprotects each payload in place through a
memoryview, without a copy per record.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import ClassVar

from ..errors import FramingError

__all__ = ["Buffer", "RecordCodec"]

#: Anything the codecs read from: the Connection's bytearray, a memoryview of it, or plain bytes.
Buffer = bytes | bytearray | memoryview

#: The largest length a uint32 header can announce.
_MAX_UINT32 = 0xFFFFFFFF


class RecordCodec:
    """One length-prefixed record framing; subclasses fix the byte order, limits and wording.

    ``min_payload``/``max_payload`` bound the length a *received* header may announce (checked from the header
    alone, before any payload is buffered); ``max_plaintext`` bounds the plaintext this side puts into one record.
    """

    #: The header layout: ``"<I"`` (MS-NNS) or ``">I"`` (SASL).
    _header: ClassVar[struct.Struct]
    #: The framing's name in messages (``"MS-NNS"``, ``"SASL"``).
    name: ClassVar[str]
    #: What one record is called on this wire, and why a bad length happens (for the FramingError message).
    _record_noun: ClassVar[str]
    _limit_note: ClassVar[str] = ""
    _bad_length_hint: ClassVar[str]

    def __init__(self, *, min_payload: int, max_payload: int, max_plaintext: int) -> None:
        if not 1 <= min_payload <= max_payload <= _MAX_UINT32:
            raise ValueError(f"max_payload must be between {min_payload} and 2**32 - 1")
        if max_plaintext < 1:
            raise ValueError("max_plaintext must be positive")
        self.min_payload = min_payload
        self.max_payload = max_payload
        self.max_plaintext = max_plaintext

    @property
    def header_size(self) -> int:
        """Bytes of the length header in front of every payload (4)."""
        return self._header.size

    @classmethod
    def encode_header(cls, length: int) -> bytes:
        """Return the header announcing a payload of ``length`` bytes."""
        return cls._header.pack(length)

    def payload_length(self, buffer: Buffer, start: int) -> int:
        """Read and validate the length at ``buffer[start:]`` (the caller checks that a whole header is there).

        Raises :class:`FramingError` when the length is outside ``min_payload..max_payload``.
        """
        (length,) = self._header.unpack_from(buffer, start)
        if length < self.min_payload or length > self.max_payload:
            raise FramingError(
                f"{self.name} {self._record_noun} announces {length} bytes; valid lengths are {self.min_payload} to "
                f"{self.max_payload}{self._limit_note}: {self._bad_length_hint}"
            )
        return int(length)

    def locate(self, buffer: Buffer, start: int = 0) -> int | None:
        """Find the record at ``buffer[start:]``: its end offset, or ``None`` while it is incomplete.

        The payload is ``buffer[start + header_size : end]``. Raises :class:`FramingError` as soon as the header
        is complete and announces an invalid length, so an oversize record is refused before it is buffered.
        """
        payload_start = start + self._header.size
        if len(buffer) < payload_start:
            return None
        end = payload_start + self.payload_length(buffer, start)
        return end if len(buffer) >= end else None

    def parse(self, buffer: Buffer, start: int = 0) -> tuple[bytes, int] | None:
        """Parse one record at ``buffer[start:]``: ``(payload, end)``, ``None`` if incomplete, or FramingError.

        The payload is copied out; a receiver that unprotects in place uses :meth:`locate` instead.
        """
        end = self.locate(buffer, start)
        if end is None:
            return None
        return bytes(buffer[start + self._header.size : end]), end

    def split(self, data: Buffer) -> Iterator[memoryview]:
        """Yield ``data`` in byte slices of at most ``max_plaintext`` (one per record); nothing for empty data."""
        view = memoryview(data).cast("B")  # limits count bytes, not the items of a wider view
        limit = self.max_plaintext
        for offset in range(0, len(view), limit):
            yield view[offset : offset + limit]

    def encode(self, data: Buffer, protect: Callable[[Buffer], tuple[bytes, Buffer]]) -> bytes:
        """Protect ``data`` record by record and return the framed wire bytes (one buffer, for one write).

        ``data`` must not be empty. ``protect`` returns each payload in two parts, ``(prefix, body)`` (signature and
        ciphertext, say): every record's header and parts are joined once, so the payload is copied once, not once
        per concatenation. Each slice is a memoryview, so ``protect`` reads it without a copy.
        """
        pack = self._header.pack
        if type(data) is memoryview and data.itemsize != 1:
            data = data.cast("B")  # record limits count bytes, not items
        if len(data) <= self.max_plaintext:  # the common case: one record, no generator
            prefix, body = protect(data)
            return b"".join((pack(len(prefix) + len(body)), prefix, body))
        parts: list[Buffer] = []
        for chunk in self.split(data):
            prefix, body = protect(chunk)
            parts += (pack(len(prefix) + len(body)), prefix, body)
        return b"".join(parts)
