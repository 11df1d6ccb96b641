"""Hypothesis fuzzing of both codecs and of Connection.receive_data / next_event (issue 8 item 1).

Profiles: ``dev`` (200 examples per test) by default, ``ci`` (10,000) when ``$CI`` is set; ``$NEGOTIATE_FUZZ_EXAMPLES``
overrides the count. They are applied per test (not loaded globally) so other hypothesis users are unaffected, and
keep no example database in the tree.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from negotiate_stream import (
    NEED_DATA,
    Connection,
    Data,
    EndOfStream,
    HandshakeComplete,
    NegotiateError,
    SecurityContext,
    State,
)
from negotiate_stream._framing import nns, sasl
from negotiate_stream.errors import FramingError
from negotiate_stream.testing import NTLMUsers, connection_pair, handshake

_COMMON = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
}
settings.register_profile("negotiate_stream.fuzz.dev", max_examples=200, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("negotiate_stream.fuzz.ci", max_examples=10_000, **_COMMON)  # type: ignore[arg-type]
_PROFILE = settings.get_profile("negotiate_stream.fuzz.ci" if os.environ.get("CI") else "negotiate_stream.fuzz.dev")
if os.environ.get("NEGOTIATE_FUZZ_EXAMPLES"):
    _PROFILE = settings(_PROFILE, max_examples=int(os.environ["NEGOTIATE_FUZZ_EXAMPLES"]))
FUZZ = settings(_PROFILE)


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NTLMUsers]:
    """One account for the module (hypothesis runs each body many times; fixtures are not reset per example).

    Kerberos is made to fail fast: with python-gssapi installed a ``negotiate`` client first tries a kinit, and DNS
    SRV lookups for the test realm's KDC can stall ~5 s.
    """
    config = tmp_path_factory.getbasetemp() / "krb5-no-dns-fuzz.conf"
    config.write_text("[libdefaults]\n dns_lookup_kdc = false\n dns_lookup_realm = false\n")
    with pytest.MonkeyPatch.context() as patch, NTLMUsers({"alice": "fuzz-password-1"}) as accounts:
        patch.setenv("KRB5_CONFIG", f"{config}:{os.environ.get('KRB5_CONFIG', '/etc/krb5.conf')}")
        yield accounts


@pytest.fixture(scope="module")
def client_first_messages(users: NTLMUsers) -> dict[str, bytes]:
    """The genuine first handshake message of an NTLM and a SPNEGO client."""
    return {p: connection_pair(users, protocol=p)[0].data_to_send() for p in ("ntlm", "negotiate")}


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split ``data`` at the (sorted, deduplicated) positions ``cuts`` taken modulo len+1."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


chunk_cuts = st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=40)


def nns_record(payload: bytes) -> bytes:
    return nns.NNSRecordCodec.encode_header(len(payload)) + payload


# -- codecs -------------------------------------------------------------------------------------------------------


def _run_decoder(decoder: nns.FrameDecoder, pieces: list[bytes], limit: int) -> tuple[list[object], bool]:  # type: ignore[name-defined, type-arg]
    frames: list[object] = []
    for piece in pieces:
        try:
            frames += decoder.feed(piece)
        except FramingError:
            return frames, True
        assert decoder.buffered <= limit
        assert decoder.buffered < sum(len(p) for p in pieces) + 1
    try:
        # An invalid header found after complete frames in the same chunk is raised by the next call.
        frames += decoder.feed(b"")
    except FramingError:
        return frames, True
    return frames, False


@FUZZ
@given(data=st.binary(max_size=600), cuts=chunk_cuts)
def test_nns_record_decoder_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    limit = nns.RECORD_HEADER_SIZE + nns.MAX_RECORD_PAYLOAD
    frames, failed = _run_decoder(nns.record_decoder(), chunked(data, cuts), limit)
    whole, whole_failed = _run_decoder(nns.record_decoder(), [data], limit)
    assert failed == whole_failed
    if not failed:
        assert frames == whole
        # what was consumed re-encodes byte for byte
        encoded = b"".join(nns_record(f) for f in frames)  # type: ignore[arg-type]
        assert data.startswith(encoded)


@FUZZ
@given(payloads=st.lists(st.binary(min_size=5, max_size=300), max_size=8), tail=st.binary(max_size=40), cuts=chunk_cuts)
def test_nns_record_decoder_valid_records_then_garbage(payloads: list[bytes], tail: bytes, cuts: list[int]) -> None:
    wire = b"".join(nns_record(p) for p in payloads)
    decoder = nns.record_decoder()
    frames: list[bytes] = []
    for piece in chunked(wire, cuts):
        frames += decoder.feed(piece)
        assert decoder.buffered <= 4 + 300
    assert frames == payloads
    assert decoder.consumed == len(wire)
    with contextlib.suppress(FramingError):
        decoder.feed(tail)
    assert decoder.buffered <= 4 + nns.MAX_RECORD_PAYLOAD


@FUZZ
@given(
    data=st.binary(max_size=600),
    cuts=chunk_cuts,
    prefix=st.sampled_from([b"", b"\x16\x01\x00", b"\x14\x01\x00", b"\x15\x01\x00\x00\x08"]),
)
def test_nns_handshake_decoder_arbitrary_bytes(data: bytes, cuts: list[int], prefix: bytes) -> None:
    data = prefix + data
    limit = nns.HANDSHAKE_HEADER_SIZE + nns.MAX_HANDSHAKE_PAYLOAD
    frames, failed = _run_decoder(nns.handshake_decoder(), chunked(data, cuts), limit)
    whole, whole_failed = _run_decoder(nns.handshake_decoder(), [data], limit)
    assert failed == whole_failed
    if not failed:
        assert frames == whole
        for frame in frames:
            assert isinstance(frame, nns.HandshakeFrame)
            assert isinstance(frame.error_code, int)
        encoded = b"".join(nns.encode_handshake(f.message_id, f.payload) for f in frames)  # type: ignore[attr-defined]
        assert data.startswith(encoded)


@FUZZ
@given(
    data=st.binary(max_size=600),
    cuts=chunk_cuts,
    max_payload=st.sampled_from([1, 5, 100, 0xFFFF, sasl.DEFAULT_MAX_BUFFER]),
)
def test_sasl_record_decoder_arbitrary_bytes(data: bytes, cuts: list[int], max_payload: int) -> None:
    frames, failed = _run_decoder(sasl.record_decoder(max_payload), chunked(data, cuts), 4 + max_payload)
    whole, whole_failed = _run_decoder(sasl.record_decoder(max_payload), [data], 4 + max_payload)
    assert failed == whole_failed
    if not failed:
        assert frames == whole
        assert all(1 <= len(f) <= max_payload for f in frames)  # type: ignore[arg-type]


@FUZZ
@given(message=st.binary(max_size=40))
def test_sasl_layer_message_arbitrary_bytes(message: bytes) -> None:
    try:
        offer = sasl.decode_layer_message(message)
    except FramingError:
        assert len(message) < 4 or message[0] & 7 == 0
        return
    assert sasl.decode_layer_message(sasl.encode_layer_message(offer)) == offer
    assert sasl.encode_layer_message(offer) == bytes([message[0] & 7]) + message[1:]


# -- Connection -------------------------------------------------------------------------------------------------


def _drive(conn: Connection, pieces: list[bytes], eof: bool) -> tuple[bytes, list[type], NegotiateError | None]:
    """Feed pieces (then EOF); return delivered data, event types, and the NegotiateError that stopped it, if any.

    Any other exception propagates and fails the test.
    """
    delivered = bytearray()
    kinds: list[type] = []
    try:
        for piece in [*pieces, b""] if eof else pieces:
            conn.receive_data(piece)
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    break
                assert isinstance(event, HandshakeComplete | Data | EndOfStream)
                kinds.append(type(event))
                if isinstance(event, Data):
                    delivered += event.data
                if isinstance(event, EndOfStream):
                    return bytes(delivered), kinds, None
                conn.data_to_send()
    except NegotiateError as exc:
        assert conn.state is State.BROKEN
        return bytes(delivered), kinds, exc
    return bytes(delivered), kinds, None


@FUZZ
@given(
    data=st.binary(max_size=300),
    prefix=st.sampled_from(
        [
            b"",
            b"\x16\x01\x00",
            b"\x14\x01\x00",
            b"\x16\x01\x00\x00\x20NTLMSSP\x00\x01\x00\x00\x00",
            b"\x16\x01\x00\x00\x10\x60",
        ]
    ),
    cuts=chunk_cuts,
    eof=st.booleans(),
    protocol=st.sampled_from(["ntlm", "negotiate"]),
)
def test_server_handshake_arbitrary_bytes(
    users: NTLMUsers, data: bytes, prefix: bytes, cuts: list[int], eof: bool, protocol: str
) -> None:
    server = Connection(SecurityContext.server(credentials=users.server_credentials(), protocol=protocol))  # type: ignore[arg-type]
    delivered, kinds, _ = _drive(server, chunked(prefix + data, cuts), eof)
    assert delivered == b""
    assert HandshakeComplete not in kinds
    assert Data not in kinds


@FUZZ
@given(
    protocol=st.sampled_from(["ntlm", "negotiate"]),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)), max_size=4),
    tail=st.binary(max_size=20),
    cuts=chunk_cuts,
    eof=st.booleans(),
)
def test_server_mutated_first_message(
    users: NTLMUsers,
    client_first_messages: dict[str, bytes],
    protocol: str,
    flips: list[tuple[int, int]],
    tail: bytes,
    cuts: list[int],
    eof: bool,
) -> None:
    message = bytearray(client_first_messages[protocol])
    for position, mask in flips:
        message[position % len(message)] ^= mask
    server = Connection(SecurityContext.server(credentials=users.server_credentials(), protocol=protocol))  # type: ignore[arg-type]
    delivered, kinds, _ = _drive(server, chunked(bytes(message) + tail, cuts), eof)
    assert delivered == b""
    assert HandshakeComplete not in kinds


@FUZZ
@given(
    flips=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)), min_size=1, max_size=4
    ),
    cuts=chunk_cuts,
)
def test_server_mutated_authentication(users: NTLMUsers, flips: list[tuple[int, int]], cuts: list[int]) -> None:
    """A real NTLM handshake whose AUTHENTICATE is corrupted: only typed errors, never a forged identity or data."""
    client, server = connection_pair(users)
    server.receive_data(client.data_to_send())
    while server.next_event() is not NEED_DATA:
        pass
    client.receive_data(server.data_to_send())
    while client.next_event() is not NEED_DATA:
        pass
    last = bytearray(client.data_to_send())
    for position, mask in flips:
        last[position % len(last)] ^= mask
    delivered, kinds, error = _drive(server, chunked(bytes(last), cuts), eof=False)
    assert delivered == b""
    assert Data not in kinds
    if error is None and server.info is not None:
        # Only bytes outside the authenticated token (e.g. 0x14 <-> 0x16) can change without failing the MIC.
        assert server.info.peer_identity == "NEGOTIATE-TEST\\alice"


@FUZZ
@given(
    messages=st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=6),
    garbage=st.lists(st.tuples(st.integers(min_value=0, max_value=6), st.binary(max_size=24)), max_size=3),
    cuts=chunk_cuts,
    level=st.sampled_from(["sign", "encrypt_and_sign"]),
    eof=st.booleans(),
)
def test_established_records_interleaved_with_garbage(
    users: NTLMUsers, messages: list[bytes], garbage: list[tuple[int, bytes]], cuts: list[int], level: str, eof: bool
) -> None:
    client, server = connection_pair(users, protection_level=level)
    handshake(client, server)
    records = [client.send(m) for m in messages]
    insertions: dict[int, bytes] = {}
    for index, junk in garbage:
        insertions[index % (len(records) + 1)] = insertions.get(index % (len(records) + 1), b"") + junk
    wire = bytearray()
    for index in range(len(records) + 1):
        wire += insertions.get(index, b"")
        if index < len(records):
            wire += records[index]
    sent = b"".join(messages)
    delivered, _kinds, error = _drive(server, chunked(bytes(wire), cuts), eof)
    # never anything that was not sent, never out of order
    assert sent.startswith(delivered)
    if not any(insertions.values()):
        assert error is None
        assert delivered == sent
    elif error is None:
        # garbage that is an incomplete record header/prefix may simply wait for more bytes
        assert not eof or delivered == sent
    # records before the first garbage are always delivered, whatever follows
    first_bad = min((index for index, junk in insertions.items() if junk), default=len(messages))
    assert delivered.startswith(b"".join(messages[:first_bad]))


@FUZZ
@given(
    data=st.binary(max_size=300),
    cuts=chunk_cuts,
    eof=st.booleans(),
    level=st.sampled_from(["sign", "encrypt_and_sign"]),
)
def test_established_arbitrary_bytes(users: NTLMUsers, data: bytes, cuts: list[int], eof: bool, level: str) -> None:
    client, server = connection_pair(users, protection_level=level)
    handshake(client, server)
    delivered, kinds, _error = _drive(server, chunked(data, cuts), eof)
    assert delivered == b""
    assert Data not in kinds
    assert server.buffered <= nns.RECORD_HEADER_SIZE + nns.MAX_RECORD_PAYLOAD
