"""A generic incremental frame decoder shared by the NNS and SASL codecs.

The codecs expose *parse functions* that look at a buffer from an offset and either return a complete frame and
the offset just past it, return ``None`` when more bytes are needed, or raise :class:`~negotiate_stream.errors.
FramingError` as soon as a header is known to be invalid (before any payload is buffered). This class turns such a
function into a decoder that can be fed arbitrary chunks, down to one byte at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from ..errors import FramingError

FrameT = TypeVar("FrameT")

#: ``parse(buffer, start) -> (frame, end) | None``; raises FramingError on an invalid header.
ParseFunction = Callable[[bytes | bytearray | memoryview, int], "tuple[FrameT, int] | None"]


class FrameDecoder(Generic[FrameT]):
    """Feed bytes in any chunking, get complete frames out.

    ``consumed`` counts the bytes that belong to frames already returned; ``buffered`` is what is held back
    waiting for the rest of a frame. The buffer never holds more than one (incomplete) frame, because parse
    functions reject oversize lengths from the header alone.
    """

    def __init__(self, parse: ParseFunction[FrameT]) -> None:
        self._parse = parse
        self._buffer = bytearray()
        self._error: FramingError | None = None
        self.consumed = 0

    @property
    def buffered(self) -> int:
        """Number of bytes received but not yet part of a returned frame."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[FrameT]:
        """Append ``data`` and return every frame it completes (possibly none).

        An invalid header raises :class:`FramingError` and makes the decoder unusable (every later call raises
        the same error). Frames completed before the invalid header in the same chunk are returned first; the
        error follows on the next call, so the outcome never depends on how the bytes were chunked.
        """
        if self._error is not None:
            raise self._error
        self._buffer += data
        frames: list[FrameT] = []
        start = 0
        try:
            while True:
                parsed = self._parse(self._buffer, start)
                if parsed is None:
                    break
                frame, start = parsed
                frames.append(frame)
        except FramingError as exc:
            self._error = exc
            self.consumed += start
            self._buffer.clear()  # nothing past a bad header is ever kept
            if frames:
                return frames
            raise
        del self._buffer[:start]
        self.consumed += start
        return frames
