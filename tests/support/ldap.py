"""LDAP helpers for the ldap3 integration's tests: a fake LDAP server with a real SASL layer, and wire observers.

:class:`FakeLdapServer` serves one connection in a thread: a real SASL ``GSS-SPNEGO`` bind driven by our own
acceptor (:class:`SecurityContext` over :class:`NTLMUsers` accounts, NTLM sign treated as seal the LDAP way, as
Samba does), then SASL records through a server-side :class:`Connection`. After the bind it hands each LDAP request
to a *behaviour*: :func:`honest` answers like a directory; the hostile ones in the tests tamper with, truncate or
drop what they send. The LDAP messages are hand-encoded BER (the few shapes needed), so the server shares no code
with the client under test.

:class:`RecordCounter` and :class:`RecordingSocket` observe a client's SASL records and raw bytes.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import KW_ONLY, dataclass, field
from types import TracebackType
from typing import Any

from negotiate_stream import NEED_DATA, Connection, Data, NegotiateError, ProtectionLevelError, SecurityContext
from negotiate_stream.testing import NTLMUsers

__all__ = [
    "FakeLdapServer",
    "LdapRequest",
    "RecordCounter",
    "RecordingSocket",
    "ServerSession",
    "honest",
    "ldap_message_sizes",
    "message",
    "result",
    "search_entry",
]

BIND_REQUEST, UNBIND_REQUEST, SEARCH_REQUEST, MODIFY_REQUEST, ADD_REQUEST, DELETE_REQUEST, EXTENDED_REQUEST = (
    0x60,
    0x42,
    0x63,
    0x66,
    0x68,
    0x4A,
    0x77,
)
#: Response tag for each request tag that has one: Modify, Add, Delete, Extended.
RESPONSE_TAGS = {MODIFY_REQUEST: 0x67, ADD_REQUEST: 0x69, DELETE_REQUEST: 0x6B, EXTENDED_REQUEST: 0x78}
BIND_RESPONSE, SEARCH_ENTRY, SEARCH_DONE = 0x61, 0x64, 0x65
SUCCESS, INVALID_CREDENTIALS, STRONGER_AUTH_REQUIRED, SASL_BIND_IN_PROGRESS = 0, 49, 8, 14
#: Seconds any socket of the fake server waits before giving up (a broken test fails instead of hanging).
TIMEOUT = 10.0

# -- just enough BER -----------------------------------------------------------------------------------------------


def _length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    encoded = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(encoded)]) + encoded


def tlv(tag: int, value: bytes) -> bytes:
    """One BER element."""
    return bytes([tag]) + _length(len(value)) + value


def _integer(tag: int, value: int) -> bytes:
    return tlv(tag, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True))


def _read(buffer: bytes, pos: int = 0) -> tuple[int, bytes, int]:
    """The BER element at ``pos``: (tag, value, position after it)."""
    tag, size = buffer[pos], buffer[pos + 1]
    pos += 2
    if size & 0x80:
        width = size & 0x7F
        size = int.from_bytes(buffer[pos : pos + width], "big")
        pos += width
    return tag, buffer[pos : pos + size], pos + size


def _children(value: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos < len(value):
        tag, inner, pos = _read(value, pos)
        yield tag, inner


def ldap_message_sizes(stream: bytes) -> list[int]:
    """The sizes of the complete LDAP messages at the start of ``stream``."""
    sizes, pos = [], 0
    while pos + 2 <= len(stream):
        _, _, end = _read(stream, pos)
        if end > len(stream):
            break
        sizes.append(end - pos)
        pos = end
    return sizes


def message(message_id: int, operation: bytes) -> bytes:
    """An LDAPMessage."""
    return tlv(0x30, _integer(0x02, message_id) + operation)


def result(tag: int, code: int, text: str = "", *extra: bytes) -> bytes:
    """An LDAPResult-shaped response (BindResponse, SearchResultDone, AddResponse...) with optional fields."""
    return tlv(tag, _integer(0x0A, code) + tlv(0x04, b"") + tlv(0x04, text.encode()) + b"".join(extra))


def search_entry(dn: str, attributes: dict[str, list[bytes]]) -> bytes:
    """A SearchResultEntry."""
    parts = b"".join(
        tlv(0x30, tlv(0x04, name.encode()) + tlv(0x31, b"".join(tlv(0x04, v) for v in values)))
        for name, values in attributes.items()
    )
    return tlv(SEARCH_ENTRY, tlv(0x04, dn.encode()) + tlv(0x30, parts))


@dataclass(frozen=True)
class LdapRequest:
    """One decoded request: its message id, protocolOp tag and protocolOp value."""

    message_id: int
    tag: int
    value: bytes

    @classmethod
    def parse(cls, pdu: bytes) -> LdapRequest:
        """Decode an LDAPMessage."""
        _, body, _ = _read(pdu)
        (_, message_id), (tag, value), *_ = _children(body)
        return cls(int.from_bytes(message_id, "big"), tag, value)

    def sasl(self) -> tuple[str, bytes]:
        """A SASL BindRequest's (mechanism, credentials)."""
        _, _, (tag, authentication) = _children(self.value)
        if tag != 0xA3:
            raise ValueError("not a SASL bind")
        parts = [value for _, value in _children(authentication)]
        return parts[0].decode(), parts[1] if len(parts) > 1 else b""


# -- the server ----------------------------------------------------------------------------------------------------


@dataclass
class ServerSession:
    """The server's side of one connection after a successful bind: read requests, write (or damage) replies."""

    sock: socket.socket
    connection: Connection
    plaintext: bytearray = field(default_factory=bytearray)
    #: Every request received, in order.
    requests: list[LdapRequest] = field(default_factory=list)

    def receive(self) -> LdapRequest | None:
        """The next request (unprotected from its SASL records), ``None`` when the client closed."""
        while not (sizes := ldap_message_sizes(bytes(self.plaintext))):
            chunk = self.sock.recv(65536)
            self.connection.receive_data(chunk)
            while (event := self.connection.next_event()) is not NEED_DATA:
                if isinstance(event, Data):
                    self.plaintext += event.data
            if not chunk:
                return None
        pdu = bytes(self.plaintext[: sizes[0]])
        del self.plaintext[: sizes[0]]
        request = LdapRequest.parse(pdu)
        self.requests.append(request)
        return request

    def protect(self, *messages: bytes) -> bytes:
        """The wire bytes of ``messages`` in SASL records (one record unless they exceed its size)."""
        return self.connection.send(b"".join(messages))

    def send(self, *messages: bytes) -> None:
        """Protect and send ``messages``."""
        self.sock.sendall(self.protect(*messages))


Behaviour = Callable[[ServerSession], None]


def honest(session: ServerSession) -> None:
    """Answer like a directory until the client unbinds: one entry per search, success for everything else."""
    while (request := session.receive()) is not None and request.tag != UNBIND_REQUEST:
        if request.tag == SEARCH_REQUEST:
            base = next(_children(request.value))[1].decode()
            # CN=big...: one entry larger than a SASL record's plaintext, so it spans several records.
            description = b"x" * 100_000 if base.startswith("CN=big") else b"sealed by the fake server"
            entry = search_entry(base, {"cn": [b"fake"], "description": [description]})
            session.send(message(request.message_id, entry), message(request.message_id, result(SEARCH_DONE, 0)))
        elif request.tag in RESPONSE_TAGS:
            extra = [tlv(0x8A, b"1.3.6.1.4.1.4203.1.11.3")] if request.tag == EXTENDED_REQUEST else []
            session.send(message(request.message_id, result(RESPONSE_TAGS[request.tag], SUCCESS, "", *extra)))


@dataclass(eq=False)
class FakeLdapServer:
    """One-connection LDAP server in a thread; see the module docstring. Use as a context manager.

    ``protection_level`` is the acceptor's minimum (a weaker client is refused with strongerAuthRequired);
    ``tls`` makes it an LDAPS server, whose acceptor requires ``channel_bindings`` if given;
    ``early_success`` answers the first bind round with success, before any context could be complete. Errors of
    the server thread are kept in :attr:`error` (the tests assert on the client side).
    """

    users: NTLMUsers
    behaviour: Behaviour = honest
    _: KW_ONLY
    protection_level: str = "sign"
    early_success: bool = False
    tls: ssl.SSLContext | None = None
    channel_bindings: bytes | None = None

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.port: int = self.listener.getsockname()[1]
        self.session: ServerSession | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="fake-ldap-server", daemon=True)

    def __enter__(self) -> FakeLdapServer:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._thread.join(TIMEOUT)
        self.listener.close()

    def _serve(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError as exc:
            self.error = exc
            return
        with sock:
            sock.settimeout(TIMEOUT)
            try:
                if self.tls is not None:
                    sock = self.tls.wrap_socket(sock, server_side=True)
                session = self._bind(sock)
                if session is not None:
                    self.session = session
                    self.behaviour(session)
            except Exception as exc:  # kept for inspection: the tests assert on what the client sees
                self.error = exc

    def _bind(self, sock: socket.socket) -> ServerSession | None:
        """Run the SASL bind; return the session, or ``None`` after a refused bind."""
        context = SecurityContext.server(
            credentials=self.users.server_credentials(),
            protocol="negotiate",
            protection_level=self.protection_level,
            channel_bindings=self.channel_bindings,
            ntlm_seal_sign_only=True,  # LDAP style: NTLM sign is sealed (Samba's force_wrap_seal)
        )
        received = b""
        while True:
            while not (sizes := ldap_message_sizes(received)):
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                received += chunk
            request = LdapRequest.parse(received[: sizes[0]])
            received = received[sizes[0] :]
            _, token = request.sasl()
            reply_id = request.message_id
            if self.early_success:  # a broken or malicious server: success before the context can be complete
                sock.sendall(message(reply_id, result(BIND_RESPONSE, SUCCESS)))
                sock.recv(1)  # wait until the client gives up (closes) before closing this side
                return None
            try:
                out = context.step(token)
            except NegotiateError as exc:
                # What Samba answers: its refusal of an unsigned bind, or AD's diagnostic for a failed logon.
                if isinstance(exc, ProtectionLevelError):
                    code, text = STRONGER_AUTH_REQUIRED, "SASL:[GSS-SPNEGO]: Sign or Seal are required."
                else:
                    code = INVALID_CREDENTIALS
                    text = f"{exc.status or 0:08X}: LdapErr: DSID-0C0904DC, comment: AcceptSecurityContext error"
                sock.sendall(message(reply_id, result(BIND_RESPONSE, code, text)))
                return None
            creds = [tlv(0x87, out)] if out else []
            code = SUCCESS if context.complete else SASL_BIND_IN_PROGRESS
            sock.sendall(message(reply_id, result(BIND_RESPONSE, code, "", *creds)))
            if context.complete:
                return ServerSession(sock, Connection(context, framing="sasl"))


# -- observers -----------------------------------------------------------------------------------------------------


class RecordCounter:
    """Counts the SASL records a client Connection unprotects (one :class:`Data` event each) and their sizes."""

    def __init__(self, connection: Connection) -> None:
        self.sizes: list[int] = []
        self.plaintexts: list[bytes] = []
        original = connection.next_event

        def counting() -> Any:
            event = original()
            if isinstance(event, Data):
                self.sizes.append(len(event.data))
                self.plaintexts.append(event.data)
            return event

        connection.next_event = counting  # type: ignore[method-assign]

    def clear(self) -> None:
        """Forget what was counted so far."""
        self.sizes.clear()
        self.plaintexts.clear()


class RecordingSocket:
    """Wraps a socket and keeps every byte received and sent (for "is it sealed on the wire?" checks)."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.received = bytearray()
        self.sent = bytearray()

    def recv(self, size: int) -> bytes:
        """Receive and record."""
        data: bytes = self.sock.recv(size)
        self.received += data
        return data

    def sendall(self, data: bytes) -> None:
        """Record and send."""
        self.sent += data
        self.sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)
