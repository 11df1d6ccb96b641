"""Tampering matrix on live in-memory NTLM sessions (sealed and sign-only, with and without ESS).

Every bit of every byte-position class of a record is flipped in turn (record length, signature version,
checksum, sequence number, ciphertext or signed plaintext); records are replayed, reordered, dropped, duplicated,
truncated and injected from another session. Each case must raise a typed error, deliver none of the tampered
bytes (nor anything after them), and leave the connection broken for every later call.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from negotiate_stream import (
    Connection,
    Data,
    FramingError,
    HandshakeComplete,
    IntegrityError,
    NegotiateError,
    RemoteProtocolError,
    TruncatedStreamError,
)
from negotiate_stream.testing import NTLMUsers, connection_pair, handshake
from tests.support.core import assert_broken_everywhere, established

MESSAGE = b"transfer 100 EUR to account 12345"
FOLLOW_UP = b"a valid record after the damage"

# Byte ranges of one NNS record carrying an NTLM payload (4-byte length, 16-byte signature, data).
# With Extended Session Security: version, 8-byte HMAC checksum, sequence number. Without ESS (NTLMv1): version,
# random pad, CRC32 checksum, sequence number, all but the version RC4-encrypted.
CLASSES_ESS = {
    "length": range(0, 4),
    "version": range(4, 8),
    "checksum": range(8, 16),
    "sequence": range(16, 20),
    "data": range(20, 20 + len(MESSAGE)),
}
CLASSES_NO_ESS = {
    "length": range(0, 4),
    "version": range(4, 8),
    "random_pad": range(8, 12),
    "checksum": range(12, 16),
    "sequence": range(16, 20),
    "data": range(20, 20 + len(MESSAGE)),
}

CONFIGS = [
    pytest.param("encrypt_and_sign", "ntlm", False, id="sealed-ntlm"),
    pytest.param("sign", "ntlm", False, id="signed-ntlm"),
    pytest.param("encrypt_and_sign", "negotiate", False, id="sealed-spnego"),
    pytest.param("sign", "negotiate", False, id="signed-spnego"),
    pytest.param("encrypt_and_sign", "ntlm", True, id="sealed-ntlmv1-no-ess"),
    pytest.param("sign", "ntlm", True, id="signed-ntlmv1-no-ess"),
]


#: ``make_session(level, protocol, no_ess)``: a fresh established (client, server) pair.
SessionFactory = Callable[[str, str, bool], tuple[Connection, Connection]]


@pytest.fixture
def make_session(ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch) -> SessionFactory:
    """A factory of established sessions: ``make(level, protocol, no_ess)``; ``no_ess`` selects NTLMv1."""

    def make(level: str, protocol: str, no_ess: bool) -> tuple[Connection, Connection]:
        """An established session at ``level`` over ``protocol``, NTLMv1 without ESS if ``no_ess``."""
        if no_ess:
            monkeypatch.setenv("LM_COMPAT_LEVEL", "0")
        else:
            monkeypatch.delenv("LM_COMPAT_LEVEL", raising=False)
        client, server = established(ntlm_users, protection_level=level, protocol=protocol)
        assert client.info is not None and client.info.shares_crypto_state is no_ess
        return client, server

    return make


def deliver(receiver: Connection, wire: bytes, *, eof: bool = True) -> tuple[list[bytes], NegotiateError | None]:
    """Feed ``wire`` (then EOF) and collect Data until an error, NEED_DATA or EndOfStream."""
    delivered: list[bytes] = []
    receiver.receive_data(wire)
    if eof:
        receiver.receive_data(b"")
    try:
        while True:
            event = receiver.next_event()
            if not isinstance(event, Data):
                return delivered, None
            delivered.append(event.data)
    except NegotiateError as exc:
        return delivered, exc


def assert_refused(
    receiver: Connection, wire: bytes, kind: type[NegotiateError] = IntegrityError, before: list[bytes] | None = None
) -> NegotiateError:
    """``wire`` (then EOF) delivers only ``before`` (default: nothing), then ``kind``; ``receiver`` stays broken."""
    delivered, error = deliver(receiver, wire)
    assert delivered == (before or [])
    assert isinstance(error, kind), repr(error)
    assert_broken_everywhere(receiver, error)
    return error


FLIP_CASES = [
    pytest.param(level, protocol, no_ess, name, id=f"{config.id}-{name}")
    for config in CONFIGS
    for level, protocol, no_ess in [config.values]
    for name in (CLASSES_NO_ESS if no_ess else CLASSES_ESS)
]


@pytest.mark.parametrize(("level", "protocol", "no_ess", "position_class"), FLIP_CASES)
@pytest.mark.parametrize("direction", ["client->server", "server->client"])
def test_flipped_bit(
    make_session: SessionFactory,
    level: str,
    protocol: str,
    no_ess: bool,
    position_class: str,
    direction: str,
) -> None:
    """Any flipped bit of a record (length, signature, data) is a typed error; nothing of it or after it arrives."""
    classes = CLASSES_NO_ESS if no_ess else CLASSES_ESS
    positions = classes[position_class]
    # Every bit of the smaller fields; bits 0, 3 and 7 of each byte of the data, to bound the run time.
    bits = (0, 3, 7) if position_class == "data" else range(8)
    for position in positions:
        for bit in bits:
            client, server = make_session(level, protocol, no_ess)
            sender, receiver = (client, server) if direction == "client->server" else (server, client)
            wire = bytearray(sender.send(MESSAGE))
            assert len(wire) == 20 + len(MESSAGE)
            if level == "sign":
                # Sign-only: the plaintext is readable, so flipping it must be caught.
                assert bytes(wire[20:]) == MESSAGE
            wire[position] ^= 1 << bit
            delivered, error = deliver(receiver, bytes(wire) + sender.send(FOLLOW_UP))
            where = f"{position_class} byte {position} bit {bit}"
            assert delivered == [], f"tampered data delivered ({where})"
            if position_class == "length":
                assert isinstance(error, FramingError | IntegrityError | TruncatedStreamError), where
            else:
                assert isinstance(error, IntegrityError), f"{where}: {error!r}"
            assert_broken_everywhere(receiver, error)


ATTACKS = [
    "replay",
    "replay-later",
    "reorder",
    "reorder-later",
    "drop",
    "duplicate",
    "duplicate-later",
    "truncate",
    "extend",
    "foreign",
    "foreign-later",
]


@pytest.mark.parametrize(("level", "protocol", "no_ess"), CONFIGS)
@pytest.mark.parametrize("attack", ATTACKS)
def test_record_stream_attacks(
    make_session: SessionFactory,
    level: str,
    protocol: str,
    no_ess: bool,
    attack: str,
) -> None:
    """Replayed, reordered, dropped, duplicated, resized or foreign records: IntegrityError after the valid prefix."""
    client, server = make_session(level, protocol, no_ess)
    records = [client.send(f"record {i}".encode()) for i in range(4)]
    first_ok: list[bytes] = []
    if attack == "replay":  # a record delivered earlier comes again later
        delivered, error = deliver(server, records[0], eof=False)
        assert delivered == [b"record 0"] and error is None
        wire = records[1] + records[0] + records[2]
        first_ok = [b"record 1"]
    elif attack == "replay-later":  # the whole stream, then one of its records again
        wire = b"".join(records) + records[1]
        first_ok = [b"record 0", b"record 1", b"record 2", b"record 3"]
    elif attack == "reorder":
        wire = records[1] + records[0] + records[2]
    elif attack == "reorder-later":
        wire = records[0] + records[2] + records[1]
        first_ok = [b"record 0"]
    elif attack == "drop":
        wire = records[0] + records[2]
        first_ok = [b"record 0"]
    elif attack == "duplicate":
        wire = records[0] + records[0] + records[1]
        first_ok = [b"record 0"]
    elif attack == "duplicate-later":
        wire = records[0] + records[1] + records[1]
        first_ok = [b"record 0", b"record 1"]
    elif attack == "truncate":  # the last byte cut off, with a length that matches
        shortened = records[0][4:-1]
        wire = len(shortened).to_bytes(4, "little") + shortened + records[1]
    elif attack == "extend":  # a byte appended inside the record
        longer = records[0][4:] + b"!"
        wire = len(longer).to_bytes(4, "little") + longer + records[1]
    elif attack == "foreign":  # a valid record of another session with the same account, same position in its stream
        other_client, _ = make_session(level, protocol, no_ess)
        wire = other_client.send(b"record 0") + records[1]
    else:  # "foreign-later": another session's first record (same length, other keys) after a valid one
        other_client, _ = make_session(level, protocol, no_ess)
        wire = records[0] + other_client.send(b"record 1") + records[1]
        first_ok = [b"record 0"]
    # The other direction of the session is broken too (assert_refused): nothing may be sent on a half-broken stream.
    error = assert_refused(server, wire, before=first_ok)
    assert isinstance(error, RemoteProtocolError)


@pytest.mark.parametrize(("level", "protocol", "no_ess"), CONFIGS)
@pytest.mark.parametrize("cut", [1, 16, len(MESSAGE)])
def test_truncated_record_reframed(
    make_session: SessionFactory,
    level: str,
    protocol: str,
    no_ess: bool,
    cut: int,
) -> None:
    """The payload shortened by ``cut`` bytes with a consistent length header: the signature no longer matches."""
    client, server = make_session(level, protocol, no_ess)
    payload = client.send(MESSAGE)[4:-cut]
    forged = len(payload).to_bytes(4, "little") + payload
    assert_refused(server, forged + client.send(FOLLOW_UP))


@pytest.mark.parametrize(("level", "protocol", "no_ess"), CONFIGS)
def test_truncated_record_at_eof(make_session: SessionFactory, level: str, protocol: str, no_ess: bool) -> None:
    """A record cut short by EOF: the whole record before it arrives, then TruncatedStreamError."""
    client, server = make_session(level, protocol, no_ess)
    assert_refused(server, client.send(b"whole") + client.send(MESSAGE)[:-1], TruncatedStreamError, [b"whole"])


@pytest.mark.parametrize(("level", "protocol", "no_ess"), CONFIGS)
def test_record_reflected_back_to_its_sender(
    make_session: SessionFactory, level: str, protocol: str, no_ess: bool
) -> None:
    """A record reflected back to its sender does not verify: the other direction's keys, or a moved counter."""
    # With ESS each direction has its own keys; without ESS the shared keystream and counter have moved on.
    client, _ = make_session(level, protocol, no_ess)
    assert_refused(client, client.send(b"reflected"))


def test_sealed_record_relabelled_as_signed_is_rejected(
    make_session: SessionFactory,
) -> None:
    """A sign-only receiver handed a sealed record (ciphertext where plaintext belongs) rejects it."""
    sealed_client, _ = make_session("encrypt_and_sign", "ntlm", False)
    _, signed_server = make_session("sign", "ntlm", False)
    assert_refused(signed_server, sealed_client.send(MESSAGE))


def test_signed_plaintext_is_visible_but_protected(
    make_session: SessionFactory,
) -> None:
    """Editing the readable plaintext of a sign-only record is detected."""
    client, server = make_session("sign", "ntlm", False)
    wire = client.send(MESSAGE)
    forged = wire.replace(b"100 EUR", b"900 EUR")
    assert forged != wire and len(forged) == len(wire)
    delivered, error = deliver(server, forged)
    assert delivered == [] and isinstance(error, IntegrityError)


@pytest.mark.parametrize(("level", "protocol", "no_ess"), CONFIGS)
def test_tampered_record_after_handshake_in_the_same_chunk(
    ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch, level: str, protocol: str, no_ess: bool
) -> None:
    """The final HandshakeDone and a tampered first record arrive together: handshake completes, record refused."""
    if no_ess:
        monkeypatch.setenv("LM_COMPAT_LEVEL", "0")
    else:
        monkeypatch.delenv("LM_COMPAT_LEVEL", raising=False)
    client, server = connection_pair(ntlm_users, protection_level=level, protocol=protocol)
    server.receive_data(client.data_to_send())
    server.next_event()
    client.receive_data(server.data_to_send())
    client.next_event()
    server.receive_data(client.data_to_send())
    assert isinstance(server.next_event(), HandshakeComplete)
    record = bytearray(server.send(MESSAGE))
    record[-1] ^= 0x40
    client.receive_data(server.data_to_send() + bytes(record))
    assert isinstance(client.next_event(), HandshakeComplete)
    with pytest.raises(IntegrityError) as info:
        client.next_event()
    assert_broken_everywhere(client, info.value)


@pytest.mark.parametrize("password", ["pw", "fourteen-chars", "a-much-longer-password-than-14", "Ünïcödé-パスワード"])
@pytest.mark.parametrize("level", ["sign", "encrypt_and_sign"])
def test_negotiate_without_ess_derives_matching_keys(
    monkeypatch: pytest.MonkeyPatch, password: str, level: str
) -> None:
    """Regression: SPNEGO without ESS derives matching keys for any password, so data flows both ways."""
    # SPNEGO clients got an NT-hash-only credential, so without ESS (key from the LM hash) the mechListMIC failed
    # and the handshake was reported as rejected credentials.
    monkeypatch.setenv("LM_COMPAT_LEVEL", "0")
    with NTLMUsers({"dave": password}) as users:
        client, server = connection_pair(users, protocol="negotiate", protection_level=level)
        client_info, server_info = handshake(client, server)
        assert client_info.shares_crypto_state and server_info.shares_crypto_state
        for i in range(3):
            server.receive_data(client.send(b"ping %d" % i))
            assert server.next_event() == Data(b"ping %d" % i)
            client.receive_data(server.send(b"pong %d" % i))
            assert client.next_event() == Data(b"pong %d" % i)
