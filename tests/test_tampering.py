"""Tampering matrix on live in-memory NTLM sessions, sealed and sign-only, with and without ESS (issue 8 item 2).

Each case must raise a typed RemoteProtocolError (IntegrityError, FramingError or TruncatedStreamError), deliver
none of the tampered bytes nor anything after them, and leave the stream broken for every later call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from negotiate_stream import (
    NEED_DATA,
    BrokenStreamError,
    Connection,
    Data,
    EndOfStream,
    FramingError,
    IntegrityError,
    RemoteProtocolError,
    State,
    TruncatedStreamError,
)
from negotiate_stream.testing import NTLMUsers, connection_pair, handshake

MESSAGE = b"transfer 100 EUR to account 12345"
FOLLOW_UP = b"a valid record after the damage"

# Byte ranges of one MS-NNS record carrying an NTLM payload: 4-byte length, 16-byte signature, data.
POSITION_CLASSES = {
    "length": range(0, 4),
    "signature-version": range(4, 8),
    "checksum": range(8, 16),  # without ESS: 4 random-pad bytes + CRC32, RC4-encrypted
    "sequence-number": range(16, 20),
    "data": range(20, 20 + len(MESSAGE)),  # ciphertext, or the readable plaintext in sign-only
}
CONFIGS = [
    pytest.param("encrypt_and_sign", True, id="sealed-ess"),
    pytest.param("sign", True, id="signed-ess"),
    pytest.param("encrypt_and_sign", False, id="sealed-no-ess"),
    pytest.param("sign", False, id="signed-no-ess"),
]


@pytest.fixture
def session(
    ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., tuple[Connection, Connection]]]:
    def make(level: str, ess: bool, **options: Any) -> tuple[Connection, Connection]:
        if ess:
            monkeypatch.delenv("LM_COMPAT_LEVEL", raising=False)
        else:
            monkeypatch.setenv("LM_COMPAT_LEVEL", "0")
        client, server = connection_pair(ntlm_users, protection_level=level, **options)
        client_info, _ = handshake(client, server)
        assert client_info.shares_crypto_state is (not ess)
        return client, server

    yield make


def receive_all(conn: Connection, wire: bytes) -> tuple[bytes, BaseException | None]:
    """Feed ``wire`` then EOF; return the delivered plaintext and the error that stopped delivery, if any."""
    delivered = bytearray()
    try:
        conn.receive_data(wire)
        conn.receive_data(b"")
        while True:
            event = conn.next_event()
            if isinstance(event, Data):
                delivered += event.data
            elif isinstance(event, EndOfStream) or event is NEED_DATA:
                return bytes(delivered), None
    except RemoteProtocolError as exc:
        return bytes(delivered), exc


def assert_rejected(
    conn: Connection, delivered: bytes, error: BaseException | None, *, allowed_prefix: bytes = b""
) -> None:
    assert isinstance(error, IntegrityError | FramingError | TruncatedStreamError), error
    assert delivered == allowed_prefix
    assert conn.state is State.BROKEN
    for call in (conn.next_event, lambda: conn.send(b"x"), lambda: conn.receive_data(b"x")):
        with pytest.raises(BrokenStreamError) as info:
            call()
        assert info.value.__cause__ is error


@pytest.mark.parametrize(("level", "ess"), CONFIGS)
@pytest.mark.parametrize("position_class", list(POSITION_CLASSES))
def test_flipped_bit_in_each_position_class(
    session: Callable[..., tuple[Connection, Connection]], level: str, ess: bool, position_class: str
) -> None:
    for position in POSITION_CLASSES[position_class]:
        for bit in (0, 3, 7):
            client, server = session(level, ess)
            wire = bytearray(client.send(MESSAGE))
            assert len(wire) == 20 + len(MESSAGE)
            if level == "sign":
                assert wire[20:] == MESSAGE  # sign-only: the plaintext is readable, so flipping it must be caught
            wire[position] ^= 1 << bit
            delivered, error = receive_all(server, bytes(wire) + client.send(FOLLOW_UP))
            assert_rejected(server, delivered, error)


@pytest.mark.parametrize(("level", "ess"), CONFIGS)
def test_replayed_record(session: Callable[..., tuple[Connection, Connection]], level: str, ess: bool) -> None:
    client, server = session(level, ess)
    first = client.send(b"pay 10")
    delivered, error = receive_all(server, first + first)
    assert_rejected(server, delivered, error, allowed_prefix=b"pay 10")
    assert isinstance(error, IntegrityError)


@pytest.mark.parametrize(("level", "ess"), CONFIGS)
def test_replayed_record_later_in_the_stream(
    session: Callable[..., tuple[Connection, Connection]], level: str, ess: bool
) -> None:
    client, server = session(level, ess)
    records = [client.send(b"record %d" % i) for i in range(4)]
    delivered, error = receive_all(server, b"".join(records) + records[1])
    assert_rejected(server, delivered, error, allowed_prefix=b"record 0record 1record 2record 3")


@pytest.mark.parametrize(("level", "ess"), CONFIGS)
def test_swapped_records(session: Callable[..., tuple[Connection, Connection]], level: str, ess: bool) -> None:
    client, server = session(level, ess)
    first, second, third = (client.send(b"record %d" % i) for i in range(3))
    delivered, error = receive_all(server, first + third + second)
    assert_rejected(server, delivered, error, allowed_prefix=b"record 0")
    assert isinstance(error, IntegrityError)


@pytest.mark.parametrize(("level", "ess"), CONFIGS)
def test_dropped_record(session: Callable[..., tuple[Connection, Connection]], level: str, ess: bool) -> None:
    client, server = session(level, ess)
    first, _dropped, third = (client.send(b"record %d" % i) for i in range(3))
    delivered, error = receive_all(server, first + third)
    assert_rejected(server, delivered, error, allowed_prefix=b"record 0")
    assert isinstance(error, IntegrityError)


@pytest.mark.parametrize(("level", "ess"), CONFIGS)
def test_duplicated_first_record_after_valid_ones(
    session: Callable[..., tuple[Connection, Connection]], level: str, ess: bool
) -> None:
    client, server = session(level, ess)
    first = client.send(b"a")
    second = client.send(b"b")
    delivered, error = receive_all(server, first + second + second)
    assert_rejected(server, delivered, error, allowed_prefix=b"ab")


@pytest.mark.parametrize(("level", "ess"), CONFIGS)
@pytest.mark.parametrize("cut", [1, 16, len(MESSAGE)])
def test_truncated_record_reframed(
    session: Callable[..., tuple[Connection, Connection]], level: str, ess: bool, cut: int
) -> None:
    """The payload shortened by ``cut`` bytes with a consistent length header: the signature no longer matches."""
    client, server = session(level, ess)
    payload = client.send(MESSAGE)[4:-cut]
    forged = len(payload).to_bytes(4, "little") + payload
    delivered, error = receive_all(server, forged + client.send(FOLLOW_UP))
    assert_rejected(server, delivered, error)


@pytest.mark.parametrize(("level", "ess"), CONFIGS)
def test_truncated_record_at_eof(session: Callable[..., tuple[Connection, Connection]], level: str, ess: bool) -> None:
    client, server = session(level, ess)
    wire = client.send(b"whole") + client.send(MESSAGE)[:-1]
    delivered, error = receive_all(server, wire)
    assert_rejected(server, delivered, error, allowed_prefix=b"whole")
    assert isinstance(error, TruncatedStreamError)


@pytest.mark.parametrize(("level", "ess"), CONFIGS)
def test_record_from_another_session(
    session: Callable[..., tuple[Connection, Connection]], level: str, ess: bool
) -> None:
    client, server = session(level, ess)
    other_client, _ = session(level, ess)
    injected = other_client.send(MESSAGE)  # same sequence number, same length, other keys
    delivered, error = receive_all(server, client.send(b"mine") + injected + client.send(FOLLOW_UP))
    assert_rejected(server, delivered, error, allowed_prefix=b"mine")
    assert isinstance(error, IntegrityError)


@pytest.mark.parametrize(("level", "ess"), CONFIGS)
def test_record_reflected_back_to_its_sender(
    session: Callable[..., tuple[Connection, Connection]], level: str, ess: bool
) -> None:
    client, _server = session(level, ess)
    wire = client.send(MESSAGE)
    # With ESS each direction has its own keys; without ESS the shared keystream and counter have moved on.
    delivered, error = receive_all(client, wire)
    assert_rejected(client, delivered, error)


def test_sealed_record_relabelled_as_signed_is_rejected(session: Callable[..., tuple[Connection, Connection]]) -> None:
    """A sign-only receiver handed a sealed record (ciphertext where plaintext belongs) rejects it."""
    sealed_client, _ = session("encrypt_and_sign", True)
    signed_client, signed_server = session("sign", True)
    assert signed_client.info is not None
    delivered, error = receive_all(signed_server, sealed_client.send(MESSAGE))
    assert_rejected(signed_server, delivered, error)


@pytest.mark.parametrize(("level", "ess"), CONFIGS)
def test_tampered_record_after_handshake_in_the_same_chunk(
    ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch, level: str, ess: bool
) -> None:
    """The final HandshakeDone and a tampered first record arrive together: handshake completes, record refused."""
    if ess:
        monkeypatch.delenv("LM_COMPAT_LEVEL", raising=False)
    else:
        monkeypatch.setenv("LM_COMPAT_LEVEL", "0")
    client, server = connection_pair(ntlm_users, protection_level=level)
    server.receive_data(client.data_to_send())
    server.next_event()
    client.receive_data(server.data_to_send())
    client.next_event()
    server.receive_data(client.data_to_send())
    server.next_event()
    record = bytearray(server.send(MESSAGE))
    record[-1] ^= 0x40
    client.receive_data(server.data_to_send() + bytes(record))
    assert client.next_event().__class__.__name__ == "HandshakeComplete"
    with pytest.raises(IntegrityError):
        client.next_event()
    assert client.state is State.BROKEN


@pytest.mark.parametrize("password", ["pw", "fourteen-chars", "a-much-longer-password-than-14", "Ünïcödé-パスワード"])
@pytest.mark.parametrize("level", ["sign", "encrypt_and_sign"])
def test_negotiate_without_ess_derives_matching_keys(
    monkeypatch: pytest.MonkeyPatch, password: str, level: str
) -> None:
    """Regression: SPNEGO clients got an NT-hash-only credential, so without ESS (key from the LM hash) the
    mechListMIC failed and the handshake was reported as rejected credentials."""
    monkeypatch.setenv("LM_COMPAT_LEVEL", "0")
    with NTLMUsers({"dave": password}) as users:
        client, server = connection_pair(users, protocol="negotiate", protection_level=level)
        client_info, server_info = handshake(client, server)
        assert client_info.shares_crypto_state and server_info.shares_crypto_state
        for i in range(3):
            wire = client.send(b"ping %d" % i)
            server.receive_data(wire)
            assert server.next_event() == Data(b"ping %d" % i)
            client.receive_data(server.send(b"pong %d" % i))
            assert client.next_event() == Data(b"pong %d" % i)
