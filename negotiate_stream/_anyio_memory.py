"""In-memory anyio byte streams for tests and examples (re-exported by :mod:`negotiate_stream.anyio_`)."""

from __future__ import annotations

import anyio
from anyio.abc import ByteStream

__all__ = ["MemoryByteStream", "memory_stream_pair"]


class MemoryByteStream(ByteStream):
    """One end of an in-memory byte stream built on anyio memory object streams (see :func:`memory_stream_pair`).

    Supports :meth:`send_eof` (the peer's :meth:`receive` then raises :class:`anyio.EndOfStream`).
    """

    def __init__(
        self,
        send_stream: anyio.abc.ObjectSendStream[bytes],
        receive_stream: anyio.abc.ObjectReceiveStream[bytes],
    ) -> None:
        """Send chunks on ``send_stream``, read them from ``receive_stream``."""
        self._send_stream = send_stream
        self._receive_stream = receive_stream
        self._leftover = b""

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Return 1 to ``max_bytes`` bytes; keeps the rest of a larger chunk for the next call.

        Raises :class:`anyio.EndOfStream` after the peer's :meth:`send_eof` or :meth:`aclose`.
        """
        if not self._leftover:
            self._leftover = await self._receive_stream.receive()
        data, self._leftover = self._leftover[:max_bytes], self._leftover[max_bytes:]
        return data

    async def send(self, item: bytes) -> None:
        """Queue a copy of ``item`` for the peer (waits while the peer's buffer is full); empty sends nothing.

        Raises :class:`anyio.ClosedResourceError` after :meth:`send_eof`, :class:`anyio.BrokenResourceError`
        when the peer closed.
        """
        if item:
            await self._send_stream.send(bytes(item))

    async def send_eof(self) -> None:
        """Close the sending direction: the peer sees EOF after the bytes already sent."""
        await self._send_stream.aclose()

    async def aclose(self) -> None:
        """Close both directions (idempotent)."""
        await self._send_stream.aclose()
        await self._receive_stream.aclose()


def memory_stream_pair(max_buffer_chunks: float = 16) -> tuple[MemoryByteStream, MemoryByteStream]:
    """Return two connected in-memory byte streams.

    Each direction buffers up to ``max_buffer_chunks`` sends (``0``: a send waits for the peer's receive;
    ``math.inf``: never waits).
    """
    a_send, b_receive = anyio.create_memory_object_stream[bytes](max_buffer_chunks)
    b_send, a_receive = anyio.create_memory_object_stream[bytes](max_buffer_chunks)
    return MemoryByteStream(a_send, a_receive), MemoryByteStream(b_send, b_receive)
