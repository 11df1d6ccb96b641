"""Tampering matrix on live in-memory NTLM sessions (sealed and sign-only).

Every bit of every byte-position class of a record is flipped in turn (record length, signature version,
checksum, sequence number, ciphertext or signed plaintext); records are replayed, reordered, dropped, duplicated,
truncated and injected from another session. Each case must raise a typed error, deliver none of the tampered
bytes (nor anything after them), and leave the connection broken for every later call.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from negotiate_stream import (
    BrokenStreamError,
    Connection,
    Data,
    FramingError,
    IntegrityError,
    NegotiateError,
    RemoteProtocolError,
    State,
    TruncatedStreamError,
)
from negotiate_stream.testing import NTLMUsers

from tests.support.core import established

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


@pytest.fixture
def make_session(
    ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str, str, bool], tuple[Connection, Connection]]:
    def make(level: str, protocol: str, no_ess: bool) -> tuple[Connection, Connection]:
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


def assert_broken(conn: Connection, cause: NegotiateError) -> None:
    assert conn.state is State.BROKEN and conn.broken_cause is cause
    for call in (conn.next_event, lambda: conn.receive_data(b"x"), lambda: conn.send(b"x")):
        with pytest.raises(BrokenStreamError) as info:
            call()
        assert info.value.__cause__ is cause


FLIP_CASES = [
    pytest.param(level, protocol, no_ess, name, id=f"{config.id}-{name}")
    for config in CONFIGS
    for level, protocol, no_ess in [config.values]
    for name in (CLASSES_NO_ESS if no_ess else CLASSES_ESS)
]


@pytest.mark.parametrize(("level", "protocol", "no_ess", "position_class"), FLIP_CASES)
@pytest.mark.parametrize("direction", ["client->server", "server->client"])
def test_flipped_bit(
    make_session: Callable[[str, str, bool], tuple[Connection, Connection]],
    level: str,
    protocol: str,
    no_ess: bool,
    position_class: str,
    direction: str,
) -> None:
    classes = CLASSES_NO_ESS if no_ess else CLASSES_ESS
    positions = classes[position_class]
    # Every bit of the smaller fields; bits 0 and 7 of each byte of the data, to bound the run time.
    bits = (0, 7) if position_class == "data" else range(8)
    for position in positions:
        for bit in bits:
            client, server = make_session(level, protocol, no_ess)
            sender, receiver = (client, server) if direction == "client->server" else (server, client)
            wire = bytearray(sender.send(MESSAGE))
            assert len(wire) == 20 + len(MESSAGE)
            if level == "sign" and position_class == "data":
                assert bytes(wire[20:]) == MESSAGE  # really flipping the plaintext of a signed record
            wire[position] ^= 1 << bit
            delivered, error = deliver(receiver, bytes(wire) + sender.send(FOLLOW_UP))
            where = f"{position_class} byte {position} bit {bit}"
            assert delivered == [], f"tampered data delivered ({where})"
            if position_class == "length":
                assert isinstance(error, FramingError | IntegrityError | TruncatedStreamError), where
            else:
                assert isinstance(error, IntegrityError), f"{where}: {error!r}"
            assert_broken(receiver, error)


@pytest.mark.parametrize(("level", "protocol", "no_ess"), CONFIGS)
@pytest.mark.parametrize("attack", ["replay", "reorder", "drop", "duplicate", "truncate", "extend", "foreign"])
def test_record_stream_attacks(
    make_session: Callable[[str, str, bool], tuple[Connection, Connection]],
    level: str,
    protocol: str,
    no_ess: bool,
    attack: str,
) -> None:
    client, server = make_session(level, protocol, no_ess)
    records = [client.send(f"record {i}".encode()) for i in range(3)]
    first_ok: list[bytes] = []
    if attack == "replay":  # a record delivered earlier comes again later
        delivered, error = deliver(server, records[0], eof=False)
        assert delivered == [b"record 0"] and error is None
        wire = records[1] + records[0] + records[2]
        first_ok = [b"record 1"]
    elif attack == "reorder":
        wire = records[1] + records[0] + records[2]
    elif attack == "drop":
        wire = records[0] + records[2]
        first_ok = [b"record 0"]
    elif attack == "duplicate":
        wire = records[0] + records[0] + records[1]
        first_ok = [b"record 0"]
    elif attack == "truncate":  # the last byte cut off, with a length that matches
        shortened = records[0][4:-1]
        wire = len(shortened).to_bytes(4, "little") + shortened + records[1]
    elif attack == "extend":  # a byte appended inside the record
        longer = records[0][4:] + b"!"
        wire = len(longer).to_bytes(4, "little") + longer + records[1]
    else:  # a valid record of another session with the same account, same position in its stream
        other_client, _ = make_session(level, protocol, no_ess)
        wire = other_client.send(b"record 0") + records[1]
    delivered, error = deliver(server, wire)
    assert delivered == first_ok
    assert isinstance(error, IntegrityError), repr(error)
    assert isinstance(error, RemoteProtocolError)
    assert_broken(server, error)
    # The other direction of the session is broken too: nothing may be sent on a half-broken stream.
    assert server.state is State.BROKEN


@pytest.mark.parametrize(("level", "protocol", "no_ess"), CONFIGS[:4])
def test_swap_directions(
    make_session: Callable[[str, str, bool], tuple[Connection, Connection]], level: str, protocol: str, no_ess: bool
) -> None:
    # A record reflected back to its sender (the other direction's keys and counter) must not verify.
    client, _ = make_session(level, protocol, no_ess)
    delivered, error = deliver(client, client.send(b"reflected"))
    assert delivered == [] and isinstance(error, IntegrityError)


def test_signed_plaintext_is_visible_but_protected(
    make_session: Callable[[str, str, bool], tuple[Connection, Connection]],
) -> None:
    client, server = make_session("sign", "ntlm", False)
    wire = client.send(MESSAGE)
    forged = wire.replace(b"100 EUR", b"900 EUR")
    assert forged != wire and len(forged) == len(wire)
    delivered, error = deliver(server, forged)
    assert delivered == [] and isinstance(error, IntegrityError)
