"""What a :class:`~negotiate_stream.Connection` received and has not parsed yet, and the loop that cuts its records.

Received bytes sit in two places, always in stream order:

* the Connection's own ``bytearray``: handshake messages and, once the stream is established, the one record that
  has arrived only in part (more only when the caller stopped reading early, e.g. an app that paused);
* after it, a buffer the caller *lent* (:meth:`ReceiveBuffer.lend`): the asyncio adapter's receive buffer, shared
  by every connection of its event loop, or an immutable ``bytes`` chunk. Whole records are unprotected straight
  out of it; when the loan ends (:meth:`ReceiveBuffer.reclaim`, or when no whole record is left) only what was not
  parsed is copied, i.e. a partial record.

So a connection holds one partial record at most, not a copy of every chunk beside the caller's buffer, and its own
buffer gives its memory back as soon as that record is consumed.
"""

from __future__ import annotations

from collections.abc import Callable

from ._framing._records import Buffer, RecordCodec

__all__ = ["SHORT_REST", "ReceiveBuffer"]

#: A record begun whose rest is at most this long is completed by a read that goes on into the next record, not by
#: a read of its own (the 1 KiB second record of each 64 KiB write would otherwise cost one).
SHORT_REST = 4096


class ReceiveBuffer:
    """The received bytes of one Connection: ``data[pos:]`` (ours), then ``lent[lent_pos:]`` (the caller's).

    Receive-side only, like the Connection methods that use it: one thread at a time.
    """

    __slots__ = ("_codec", "_header", "_unprotect", "data", "lent", "lent_pos", "pos")

    def __init__(self) -> None:
        self.data = bytearray()
        self.pos = 0
        self.lent: memoryview | None = None
        self.lent_pos = 0

    def expect_records(self, codec: RecordCodec, unprotect: Callable[[Buffer], bytes]) -> None:
        """From now on :meth:`next_record` cuts ``codec`` records and opens them with ``unprotect``."""
        self._codec, self._header, self._unprotect = codec, codec.header_size, unprotect

    def __len__(self) -> int:
        """Bytes received and not parsed yet (ours and lent)."""
        lent = 0 if self.lent is None else len(self.lent) - self.lent_pos
        return len(self.data) - self.pos + lent

    def append(self, data: Buffer) -> None:
        """Keep a copy of ``data``, after what is left of a loan."""
        self.reclaim()
        self.data += data

    def lend(self, view: memoryview) -> None:
        """Parse ``view`` in place until :meth:`reclaim`; the caller must not change it meanwhile."""
        if self.lent is not None:
            self.reclaim()
        self.lent, self.lent_pos = view, 0

    def reclaim(self) -> None:
        """End the loan: copy the lent bytes not parsed yet into our own buffer."""
        lent, self.lent = self.lent, None
        if lent is not None and self.lent_pos < len(lent):
            self.compact()
            self.data += lent[self.lent_pos :]
        self.lent_pos = 0

    def missing(self) -> int:
        """Bytes still to come of the record begun in our own buffer; 0 when none is (nothing, or whole records the
        app has not read yet), or when its header is incomplete."""
        data, pos, header = self.data, self.pos, self._header
        if self.lent is not None or len(data) - pos < header:
            return 0
        return max(0, pos + header + self._codec.payload_length(data, pos) - len(data))

    def next_read(self, frame: int) -> int:
        """How much the next read should take, ``frame`` being the largest record frame: one frame at a record
        boundary, else the rest of the record begun - plus one frame after a short rest (:data:`SHORT_REST`). A
        read then takes about one record from the kernel and stops at a record boundary when the data is there."""
        missing = self.missing()
        return missing if missing > SHORT_REST else missing + frame

    def drop(self) -> None:
        """Forget everything: a broken stream never reads again (nothing past a bad header is kept)."""
        # A fresh buffer, not clear(): no view of the old one can make this fail.
        self.data, self.pos, self.lent, self.lent_pos = bytearray(), 0, None, 0

    def compact(self) -> None:
        """Drop the parsed bytes of our own buffer."""
        # At once, so the buffer holds only unparsed bytes: a bytearray drops a prefix without moving the rest and
        # gives memory back once it is less than half full; clear() gives it all back.
        if self.pos == len(self.data):
            self.data.clear()
        elif self.pos:
            del self.data[: self.pos]
        self.pos = 0

    def take(self) -> bytes | None:
        """Everything received, ours first (protection level none: no records); ``None`` when nothing is."""
        if self.pos < len(self.data):
            data = bytes(self.data[self.pos :])
            self.data.clear()
            self.pos = 0
            return data
        lent, start = self.lent, self.lent_pos
        self.lent, self.lent_pos = None, 0
        return None if lent is None else bytes(lent[start:])

    def next_record(self) -> bytes | None:
        """The plaintext of the next non-empty record, or ``None`` when no whole record is left.

        Raises :class:`~negotiate_stream.errors.FramingError` for an invalid length and whatever the ``unprotect``
        function of :meth:`expect_records` raises. A partial record left in lent bytes is copied into our buffer
        (the loan ends).
        """
        codec, header, unprotect = self._codec, self._header, self._unprotect
        while True:
            if self.pos < len(self.data):  # a record begun in our buffer comes before anything lent
                if self.lent is not None:
                    self._top_up()
                data, pos = self.data, self.pos
                if (end := codec.locate(data, pos)) is None:
                    return None
                # The context reads the record in place (no copy); both views are released before the buffer is
                # compacted, since a bytearray cannot be resized while a view of it exists.
                with memoryview(data) as view, view[pos + header : end] as payload:
                    plaintext = unprotect(payload)
                self.pos = end
                self.compact()
            elif (lent := self.lent) is not None:
                pos = self.lent_pos
                if (end := codec.locate(lent, pos)) is None:
                    self.reclaim()  # a partial record: the only bytes copied
                    return None
                self.lent, self.lent_pos = (None, 0) if end == len(lent) else (lent, end)
                plaintext = unprotect(lent[pos + header : end])  # nothing resizes what is lent
            else:
                return None
            if plaintext:
                return plaintext
            # An empty record (a peer may send one) carries no plaintext: keep parsing.

    def _top_up(self) -> None:
        """Move from the lent bytes into our buffer just those that complete the record begun there."""
        lent, data, codec, header = self.lent, self.data, self._codec, self._header
        assert lent is not None
        start = self.lent_pos
        missing = self.pos + header - len(data)  # of the header first
        if missing > 0:
            data += lent[start : start + missing]
            start += missing
        if len(data) - self.pos >= header:  # then of the payload it announces
            missing = self.pos + header + codec.payload_length(data, self.pos) - len(data)
            if missing > 0:
                data += lent[start : start + missing]
                start += missing
        self.lent, self.lent_pos = (None, 0) if start >= len(lent) else (lent, start)
