"""The data the bulk scenarios send (:func:`pattern_block`) and how receivers check it (:class:`StreamVerifier`)."""

from __future__ import annotations

import os
import random
import zlib

from .config import KIB, MIB, WRITE_SIZE

__all__ = ["StreamVerifier", "pattern_block"]


def pattern_block(seed: int | None = None) -> bytes:
    """The 64 KiB block the bulk senders repeat (pseudo-random, so compression or zero pages cannot help).

    With a ``seed`` the block is reproducible, so a sender and a receiver in two processes agree on it.
    """
    if seed is None:
        return os.urandom(WRITE_SIZE)
    return random.Random(seed).randbytes(WRITE_SIZE)


class StreamVerifier:
    """Count received bytes and check CRC-32 checksums of sampled windows of a known repeating pattern.

    The sender writes ``pattern`` (64 KiB) over and over; the receiver feeds every chunk it gets to :meth:`feed`.
    Every ``sample_every`` bytes, the next ``window`` bytes are checksummed and compared with the pattern's start
    (``sample_every`` is a multiple of the pattern length, so every window holds the same bytes). A lost,
    duplicated, reordered or corrupted record inside a window, or a wrong total, fails :attr:`ok`.
    """

    def __init__(self, pattern: bytes, total: int, *, sample_every: int = 4 * MIB, window: int = 4 * KIB) -> None:
        if sample_every % len(pattern) or window > len(pattern):
            raise ValueError("sample_every must be a multiple of the pattern length and window <= pattern")
        self.total = total
        self.received = 0
        self.windows_checked = 0
        self.mismatches = 0
        self._every = sample_every
        self._window = window
        self._expected = zlib.crc32(pattern[:window])
        self._crc = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Account for one received chunk."""
        start = self.received
        self.received = end = start + len(data)
        offset = start % self._every
        if offset >= self._window and end - start + offset < self._every:
            return  # the fast path: the chunk lies between two windows
        view = memoryview(data)
        position = start
        while position < end:
            offset = position % self._every
            if offset < self._window:
                take = min(self._window - offset, end - position)
                self._crc = zlib.crc32(view[position - start : position - start + take], self._crc)
                position += take
                if position % self._every == self._window:
                    self.windows_checked += 1
                    if self._crc != self._expected:
                        self.mismatches += 1
                    self._crc = 0
            else:
                position += self._every - offset

    @property
    def complete(self) -> bool:
        """True once ``total`` bytes arrived."""
        return self.received >= self.total

    @property
    def ok(self) -> bool:
        """True when exactly ``total`` bytes arrived and every sampled window matched."""
        return self.received == self.total and self.mismatches == 0 and self.windows_checked > 0
