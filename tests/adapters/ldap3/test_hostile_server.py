"""A hostile LDAP server after a real sealed bind: damaged buffers are typed errors on the ldap3 call, never data.

Each server below completes an honest SASL GSS-SPNEGO NTLM bind with our acceptor, receives one search, and then
misbehaves. The client must raise one of our errors from ``conn.search`` (never return decoded LDAP data, never
hang: ldap3's ``receive_timeout`` is only a guard), and every later call raises :class:`BrokenStreamError`.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

import ldap3
import pytest

from negotiate_stream.errors import (
    BrokenStreamError,
    ConnectionLostError,
    FramingError,
    IntegrityError,
    NegotiateError,
    TruncatedStreamError,
)
from negotiate_stream.ldap3 import bind
from negotiate_stream.testing import NTLMUsers
from tests.support.ldap import (
    SEARCH_DONE,
    FakeLdapServer,
    LdapRequest,
    ServerSession,
    message,
    result,
    search_entry,
)

BASE = "DC=fake,DC=test"
SECRET = b"must never reach the caller"


def answer(request: LdapRequest) -> tuple[bytes, bytes]:
    """The honest reply to a search: one entry and the SearchResultDone."""
    entry = search_entry(BASE, {"description": [SECRET]})
    return message(request.message_id, entry), message(request.message_id, result(SEARCH_DONE, 0))


Damage = Callable[[ServerSession, LdapRequest], None]


def search_then(damage: Damage) -> Callable[[ServerSession], None]:
    """A behaviour: receive the search and let ``damage`` answer it (badly)."""

    def behaviour(session: ServerSession) -> None:
        request = session.receive()
        assert request is not None
        damage(session, request)
        session.sock.shutdown(socket.SHUT_WR)
        while session.sock.recv(65536):  # until the client closes: no RST can overtake what was sent
            pass

    return behaviour


def flip_last_byte(session: ServerSession, request: LdapRequest) -> None:
    """Tampering: one bit of the ciphertext changes."""
    wire = session.protect(*answer(request))
    session.sock.sendall(wire[:-1] + bytes([wire[-1] ^ 0x01]))


def shorten_token(session: ServerSession, request: LdapRequest) -> None:
    """A truncated buffer whose length header was fixed up to match: the token itself is short."""
    payload = session.protect(*answer(request))[4:-1]
    session.sock.sendall(struct.pack(">I", len(payload)) + payload)


def cut_mid_record(session: ServerSession, request: LdapRequest) -> None:
    """The server closes half-way through the record."""
    wire = session.protect(*answer(request))
    session.sock.sendall(wire[: len(wire) // 2])


def plaintext_reply(session: ServerSession, request: LdapRequest) -> None:
    """The server answers in clear LDAP after the sealed bind (a downgrade)."""
    session.sock.sendall(b"".join(answer(request)))


def zero_length(session: ServerSession, request: LdapRequest) -> None:
    """A SASL buffer announcing zero bytes (Samba itself refuses those)."""
    session.sock.sendall(b"\x00\x00\x00\x00" + session.protect(*answer(request)))


def entry_then_drop(session: ServerSession, request: LdapRequest) -> None:
    """The server sends the entry, then hangs up before the SearchResultDone (mid-operation)."""
    session.send(answer(request)[0])


def drop(session: ServerSession, request: LdapRequest) -> None:
    """The server hangs up without answering."""


def reset(session: ServerSession, request: LdapRequest) -> None:
    """The server resets the connection (RST) without answering."""
    session.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    session.sock.close()


def replay(session: ServerSession, request: LdapRequest) -> None:
    """The honest reply, then the same buffer again for the next search (a replay)."""
    wire = session.protect(*answer(request))
    session.sock.sendall(wire)
    assert session.receive() is not None
    session.sock.sendall(wire)


@pytest.mark.parametrize(
    ("damage", "error"),
    [
        (flip_last_byte, IntegrityError),
        (shorten_token, IntegrityError),
        (cut_mid_record, TruncatedStreamError),
        (plaintext_reply, FramingError),
        (zero_length, FramingError),
        (entry_then_drop, ConnectionLostError),
        (drop, ConnectionLostError),
        (reset, ConnectionLostError),
    ],
    ids=["tampered", "shortened-token", "truncated", "plaintext", "zero-length", "entry-then-drop", "dropped", "reset"],
)
@pytest.mark.parametrize("level", ["sign", "encrypt_and_sign"])
def test_damaged_reply_is_a_typed_error(
    ntlm_users: NTLMUsers, damage: Damage, error: type[NegotiateError], level: str
) -> None:
    """Each damaged reply raises its typed error from conn.search; nothing of it is returned; later calls break.

    Dropped and reset connections are ConnectionLostError (a cut inside a record its subclass
    TruncatedStreamError); unbind() still closes the broken connection.
    """
    with FakeLdapServer(ntlm_users, search_then(damage), protection_level=level) as server:
        target = ldap3.Server("127.0.0.1", port=server.port, get_info=ldap3.NONE)
        conn = ldap3.Connection(target, receive_timeout=10)
        bind(conn, credentials=ntlm_users.client_credentials(), protocol="ntlm", protection_level=level)
        try:
            with pytest.raises(error) as caught:
                conn.search(BASE, "(objectClass=*)", attributes=["description"])
            assert not conn.response and SECRET.decode() not in str(caught.value)
            with pytest.raises(BrokenStreamError) as later:
                conn.search(BASE, "(objectClass=*)")
            assert later.value.__cause__ is caught.value
        finally:
            conn.unbind()  # a broken session still unbinds: the socket is closed, nothing is sent
        assert conn.closed


def test_replayed_buffer_is_an_integrity_error(ntlm_users: NTLMUsers) -> None:
    """A valid buffer sent a second time fails its sequence check: the first search works, the second raises."""
    with FakeLdapServer(ntlm_users, search_then(replay)) as server:
        conn = ldap3.Connection(ldap3.Server("127.0.0.1", port=server.port, get_info=ldap3.NONE), receive_timeout=10)
        bind(conn, credentials=ntlm_users.client_credentials(), protocol="ntlm")
        try:
            assert conn.search(BASE, "(objectClass=*)", attributes=["description"])
            assert conn.entries[0].description.value == SECRET.decode()
            with pytest.raises(IntegrityError):
                conn.search(BASE, "(objectClass=*)", attributes=["description"])
        finally:
            conn.unbind()
