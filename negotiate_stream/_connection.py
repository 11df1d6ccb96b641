"""The sans-I/O protocol engine: a state machine fed bytes, returning bytes and events.

:class:`Connection` knows the MS-NNS handshake, the record framing (MS-NNS or SASL) and the security context; it
never touches a socket, an event loop or a clock. An I/O layer is three loops:

* receive side: ``receive_data(chunk)`` (``b""`` at EOF), then ``next_event()`` until it returns
  :data:`NEED_DATA`; after each call, write ``data_to_send()`` to the peer (handshake messages);
* send side: ``wire = send(plaintext)`` and write ``wire``;
* on any exception: write ``data_to_send()`` once more (it may hold a HandshakeError frame for the peer), then
  close the transport.

Received records are verified in place (:mod:`._receive_buffer`): ``bytes`` chunks are never copied whole, and an
adapter that reads into a reused buffer lends it (``_lend`` / ``_reclaim``); only a partial record is kept.

Concurrency (the SSPI rule: one encryptor and one decryptor at a time, never two of either): ``send`` belongs to
the send side; ``receive_data``, ``next_event`` and ``data_to_send`` to the receive side. One send and one receive
may run at the same time in two threads, unless :attr:`SessionInfo.shares_crypto_state` is true (NTLM without
Extended Session Security), in which case one lock must serialise both sides.

NTLM without Extended Session Security has ONE RC4 keystream per side for both directions, so the two sides stay
in step only if records never cross on the wire: such a session must be strictly request/response (half-duplex).
No lock can fix a protocol that sends in both directions at once; check :attr:`SessionInfo.shares_crypto_state`
(pyspnego only negotiates it when ``LM_COMPAT_LEVEL=0``; Windows and .NET use ESS by default).

Frames are read and written only through the :mod:`._framing` codecs. Each handshake message sent or received,
and the session established, is logged at DEBUG on the ``negotiate_stream`` logger (message ids and token sizes,
never token bytes): that is the trace ``negotiate-stream -v`` prints, the same for every adapter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from ._context import ProtectionLevel, SecurityContext
from ._events import NEED_DATA, Data, EndOfStream, Event, HandshakeComplete, SessionInfo, State, _NeedData
from ._framing import nns, sasl
from ._framing._records import RecordCodec
from ._options import Framing
from ._receive_buffer import ReceiveBuffer
from .errors import (
    SEC_E_INTERNAL_ERROR,
    AuthenticationError,
    BrokenStreamError,
    FramingError,
    HandshakeError,
    LocalProtocolError,
    NegotiateError,
    StreamClosedError,
    TruncatedStreamError,
)

# The events, states and SessionInfo live in ._events (imported from there, or from the package root).
__all__ = ["Connection"]

# The trace that ``negotiate-stream -v`` shows: handshake message ids and token sizes, never token bytes.
_logger = logging.getLogger("negotiate_stream")
# The states the per-record paths compare with: an Enum member lookup costs ~70 ns on Python 3.11.
_HANDSHAKING, _ESTABLISHED = State.HANDSHAKING, State.ESTABLISHED

#: Handshake round trips after which we give up (NTLM needs 2, Kerberos 1-2, SPNEGO 2-3).
MAX_HANDSHAKE_ROUNDS = 16


class Connection:
    """One side of a negotiate-protected byte stream, without I/O.

    ``framing="nns"`` runs the MS-NNS handshake over the stream, then MS-NNS records. ``framing="sasl"`` takes a
    context already established out of band (e.g. by an LDAP SASL bind) and speaks SASL security-layer records;
    the :class:`HandshakeComplete` event is then the first event. The Connection tells the context its framing
    (:meth:`SecurityContext.set_framing`): with the default ``ntlm_seal_sign_only=None``, NTLM at protection level
    sign is sealed under SASL framing (LDAP-style, as Windows and Samba) and signature + plaintext under MS-NNS.

    A client Connection has its first handshake message ready in :meth:`data_to_send` right after construction.
    """

    def __init__(
        self,
        context: SecurityContext,
        *,
        framing: Framing = "nns",
        sasl_max_buffer: int = sasl.DEFAULT_MAX_BUFFER,
        sasl_peer_max_buffer: int = sasl.DEFAULT_MAX_BUFFER,
        error_byteorder: Literal["big", "little"] = "big",
    ) -> None:
        self.context = context
        self.framing = framing
        self._error_byteorder = error_byteorder
        self._state = State.HANDSHAKING
        self._broken_cause: BaseException | None = None
        self._received = ReceiveBuffer()  # our copy (at most a partial record once established), then a loan
        self._eof = False
        self._outgoing = bytearray()
        self._peer_done = False
        self._rounds = 0
        self._pending: list[Event] = []
        self.info: SessionInfo | None = None
        self._codec: RecordCodec
        # First, so the records get the layout of this framing; it refuses an unknown framing with ValueError.
        context.set_framing(framing)
        if framing == "nns":
            self._codec = nns.NNSRecordCodec()
            if not context.is_server:
                self._guarded(self._client_start)
        elif framing == "sasl":
            if not context.complete:
                raise LocalProtocolError(
                    "SASL framing needs a context already established by the SASL bind: step it to completion first"
                )
            self._codec = sasl.SaslRecordCodec.for_buffers(sasl_max_buffer, sasl_peer_max_buffer)
            self._establish()
        else:
            raise ValueError("framing must be 'nns' or 'sasl'")

    # -- state ---------------------------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current :class:`State`."""
        return self._state

    @property
    def broken_cause(self) -> BaseException | None:
        """The error that broke the connection, if it is broken."""
        return self._broken_cause

    def _check_usable(self, side: str) -> None:
        if self._state is State.BROKEN:
            raise BrokenStreamError(
                f"cannot {side}: the stream is broken by an earlier error ({self._broken_cause}); "
                "close it and open a new connection"
            ) from self._broken_cause
        if self._state is State.CLOSED:
            raise StreamClosedError(f"cannot {side}: the stream was closed by this side")

    def mark_broken(self, exc: BaseException) -> None:
        """Declare the stream broken by an I/O-layer failure (e.g. a write interrupted mid-record).

        Every later call raises :class:`BrokenStreamError` chained to ``exc``. The first cause is kept.
        """
        if self._state is not State.BROKEN:
            self._state = State.BROKEN
            self._broken_cause = exc

    def _guarded(self, action: Callable[[], None]) -> None:
        try:
            action()
        except NegotiateError as exc:
            self._fail_handshake(exc)
            raise

    def close(self) -> None:
        """Mark the stream closed by this side (MS-NNS and SASL have no close message: just close the transport)."""
        if self._state is not State.BROKEN:
            self._state = State.CLOSED

    # -- handshake -------------------------------------------------------------------------------------------------

    def _client_start(self) -> None:
        token = self.context.step(None)
        if token is None:
            raise AuthenticationError("the initiator produced no first token", status=SEC_E_INTERNAL_ERROR)
        message_id = nns.MessageId.HANDSHAKE_DONE if self.context.complete else nns.MessageId.HANDSHAKE_IN_PROGRESS
        self._queue_handshake(message_id, token)

    def _queue_handshake(self, message_id: nns.MessageId, token: bytes) -> None:
        if len(token) > nns.MAX_HANDSHAKE_PAYLOAD:
            raise AuthenticationError(
                f"our {len(token)}-byte handshake token exceeds the MS-NNS limit of {nns.MAX_HANDSHAKE_PAYLOAD} "
                "bytes (an oversized token from the peer, or a Kerberos ticket with a very large PAC)",
                status=SEC_E_INTERNAL_ERROR,
            )
        self._outgoing += nns.encode_handshake(message_id, token)
        _trace("sent", message_id, token)

    def _fail_handshake(self, exc: NegotiateError) -> None:
        """Queue a HandshakeError frame for the peer (unless the peer reported the error) and break."""
        if self._state is State.HANDSHAKING and self.framing == "nns" and not isinstance(exc, HandshakeError):
            code = exc.status if exc.status is not None else SEC_E_INTERNAL_ERROR
            frame = nns.encode_error(code, byteorder=self._error_byteorder)
            self._outgoing += frame
            _trace("sent", nns.MessageId.HANDSHAKE_ERROR, frame[nns.HANDSHAKE_HEADER_SIZE :])
        self.mark_broken(exc)

    def _handle_handshake(self, frame: nns.HandshakeFrame) -> None:
        if frame.message_id is nns.MessageId.HANDSHAKE_ERROR:
            raise HandshakeError(frame.error_code)
        self._rounds += 1
        if self._rounds > MAX_HANDSHAKE_ROUNDS:
            raise AuthenticationError(
                f"the handshake did not finish within {MAX_HANDSHAKE_ROUNDS} messages", status=SEC_E_INTERNAL_ERROR
            )
        if frame.message_id is nns.MessageId.HANDSHAKE_DONE:
            self._peer_done = True
        context = self.context
        if context.complete:
            if frame.message_id is nns.MessageId.HANDSHAKE_IN_PROGRESS:
                raise FramingError("the peer sent another handshake token after our context was complete")
        else:
            if not frame.payload:
                raise FramingError("the peer sent an empty handshake token while authentication was still running")
            token = context.step(frame.payload)
            if context.complete:
                if context.is_server:
                    # The server always ends with HandshakeDone, empty when it has no final token.
                    self._queue_handshake(nns.MessageId.HANDSHAKE_DONE, token or b"")
                    self._peer_done = True
                elif token is not None:
                    self._queue_handshake(nns.MessageId.HANDSHAKE_DONE, token)
            elif token is None:
                raise AuthenticationError(
                    "authentication is incomplete but produced no token to send", status=SEC_E_INTERNAL_ERROR
                )
            else:
                self._queue_handshake(nns.MessageId.HANDSHAKE_IN_PROGRESS, token)
        if context.complete and self._peer_done:
            self._establish()

    def _establish(self) -> None:
        context = self.context
        level = context.protection_level
        self.info = SessionInfo(
            protocol=context.negotiated_protocol,
            protection_level=level,
            peer_identity=context.peer_identity,
            mutually_authenticated=context.is_mutually_authenticated,
            is_server=context.is_server,
            shares_crypto_state=context.shares_crypto_state,
            sizes=context.stream_sizes(self._codec.max_plaintext),
            framing=self.framing,
            impersonation_level=context.impersonation_level,
            delegated_credentials=context.delegated_credentials,
        )
        self._framed = level is not ProtectionLevel.NONE
        self._received.expect_records(self._codec, context.unprotect)
        self._state = State.ESTABLISHED
        self._pending.append(HandshakeComplete(self.info))
        if _logger.isEnabledFor(logging.DEBUG):
            _log_session(self.info)

    # -- receive side -----------------------------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes received from the peer; ``b""`` means the peer closed (EOF).

        After calling this you should call :meth:`next_event` until it returns :data:`NEED_DATA`.
        """
        self._check_usable("receive")
        if not data:
            self._eof = True
        elif self._eof:
            raise LocalProtocolError("receive_data() called with data after EOF was signalled")
        elif type(data) is bytes and self._state is _ESTABLISHED:
            self._received.lend(memoryview(data))  # immutable: parsed in place, only a partial record is copied
        else:
            self._received.append(data)

    def _lend(self, view: memoryview) -> None:
        """Like :meth:`receive_data`, but parse ``view`` in place instead of copying it (for a reused buffer).

        The caller must leave ``view`` unchanged until :meth:`next_event` returned :data:`NEED_DATA` or it called
        :meth:`_reclaim`, which copies what is left (a partial record, or the records the caller stopped reading
        early) into the Connection. Before the handshake completes ``view`` is copied at once.
        """
        if self._state is not _ESTABLISHED or self._eof or not view:
            self.receive_data(view)  # copies, signals EOF or refuses data after EOF
        else:
            self._received.lend(view)

    def _reclaim(self) -> None:
        """End a loan made by :meth:`_lend`: keep a copy of the lent bytes not parsed yet."""
        self._received.reclaim()

    def next_event(self) -> Event | _NeedData:
        """Parse the next event from the received bytes, or return :data:`NEED_DATA`.

        After calling this you must call :meth:`data_to_send` and send the result (handshake replies). Raises a
        :class:`NegotiateError` on failure; the connection is then broken (later calls raise
        :class:`BrokenStreamError`), and during the handshake :meth:`data_to_send` holds an Error frame.
        """
        if self._pending:
            return self._pending.pop(0)
        if self._state is not _HANDSHAKING:
            item = self._next_plaintext()
            return Data(item) if isinstance(item, bytes) else item
        try:
            return self._next_handshake_event()
        except NegotiateError as exc:
            self._received.drop()
            self._fail_handshake(exc)
            raise

    def _next_plaintext(self) -> bytes | EndOfStream | _NeedData:
        """:meth:`next_event` once established, with the plaintext of a record instead of a :class:`Data` event.

        The adapters' hot path: the same checks and errors as :meth:`next_event`, one allocation less per record.
        """
        if self._state is not _ESTABLISHED:
            self._check_usable("receive")
        received = self._received
        if received.lent is None and received.pos == len(received.data):  # nothing left: every loop's last call
            return EndOfStream() if self._eof else NEED_DATA
        try:
            plaintext = received.next_record() if self._framed else received.take()
            if plaintext is not None:
                return plaintext
            if self._eof and received:
                raise TruncatedStreamError(
                    f"the peer closed the connection in the middle of a {self._codec.name} record "
                    f"({len(received)} bytes of it received): the data was truncated"
                )
        except NegotiateError as exc:
            received.drop()
            self.mark_broken(exc)
            raise
        return EndOfStream() if self._eof else NEED_DATA

    def _next_handshake_event(self) -> Event | _NeedData:
        received = self._received
        while self._state is State.HANDSHAKING:
            parsed = nns.parse_handshake(received.data, received.pos)
            if parsed is None:
                if self._eof:
                    raise TruncatedStreamError(
                        "the peer closed the connection during the handshake: it probably rejected our "
                        "authentication without sending an error (check credentials and protection level)"
                    )
                return NEED_DATA
            frame, received.pos = parsed
            _trace("received", frame.message_id, frame.payload)
            self._handle_handshake(frame)
        received.compact()  # records that came with the last handshake message wait in the buffer
        return self._pending.pop(0) if self._pending else NEED_DATA

    def _read_size(self) -> int:
        """How much the adapter's next read should take, to stop near a record boundary (ReceiveBuffer.next_read)."""
        frame = self._codec.header_size + self._codec.max_payload
        return self._received.next_read(frame) if self._framed else frame

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events (at most one partial record)."""
        return len(self._received)

    def data_to_send(self) -> bytes:
        """Return (and forget) handshake bytes waiting to be sent to the peer; ``b""`` if none."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    # -- send side ---------------------------------------------------------------------------------------------

    def send(self, data: bytes | bytearray | memoryview) -> bytes:
        """Protect ``data`` and return the wire bytes to write (one or more records; ``b""`` for empty data).

        Raises :class:`LocalProtocolError` before the handshake completes, :class:`StreamClosedError` after
        :meth:`close`, :class:`BrokenStreamError` once broken.
        """
        if self._state is not _ESTABLISHED:
            if self._state is _HANDSHAKING:
                raise LocalProtocolError("cannot send application data before the handshake completes")
            self._check_usable("send")
        if not data:
            return b""
        if not self._framed:
            return bytes(data)
        try:
            return self._codec.encode(data, self.context.protect_parts)
        except NegotiateError as exc:
            self.mark_broken(exc)
            raise

    def __repr__(self) -> str:
        role = "server" if self.context.is_server else "client"
        return f"<Connection {role} framing={self.framing} state={self._state.value}>"


def _trace(direction: str, message_id: nns.MessageId, payload: bytes) -> None:
    """DEBUG-log one handshake message sent or received (cheap when DEBUG is off: one level check)."""
    if _logger.isEnabledFor(logging.DEBUG):
        _logger.debug("handshake %s %s", direction, nns.HandshakeFrame(message_id, payload).describe())


def _log_session(info: SessionInfo) -> None:
    """DEBUG-log what the handshake established (the last line of the handshake trace)."""
    _logger.debug(
        "handshake complete (%s side): protocol %s, protection %s (signed %s, encrypted %s), peer %s, "
        "mutual auth %s, one cipher state for both directions %s, record overhead %d bytes, max %d bytes/record",
        "server" if info.is_server else "client",
        info.protocol,
        info.protection_level.value,
        info.is_signed,
        info.is_encrypted,
        info.peer_identity,
        info.mutually_authenticated,
        info.shares_crypto_state,
        info.sizes.header + info.sizes.trailer,
        info.sizes.max_message,
    )
