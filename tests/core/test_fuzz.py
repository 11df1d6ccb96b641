"""Hypothesis fuzzing of both codecs and of Connection.receive_data / next_event.

Properties: only our typed errors escape; what the codecs return never depends on where the input is cut (a frame
is returned once all of its bytes are there, an invalid header fails the same way however the bytes arrived); the
Connection holds less than one frame while it waits, stays broken after an error, and never delivers bytes that
were not sent by the authenticated peer, in order.

Profiles: ``dev`` (200 examples per test) by default, ``ci`` (10,000) when ``$CI`` is set;
``$NEGOTIATE_FUZZ_EXAMPLES`` overrides the count. They are applied per test (not loaded globally) so other
hypothesis users are unaffected, and keep no example database in the tree.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from negotiate_stream import Connection, Data, EndOfStream, HandshakeComplete, HandshakeError, SecurityContext, State
from negotiate_stream._framing import nns, sasl
from negotiate_stream.errors import FramingError
from negotiate_stream.testing import NTLMUsers, connection_pair, handshake
from tests.support.core import established, feed_pieces

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

#: A Connection waiting for more bytes holds less than one whole MS-NNS frame (both limits are 65,540 bytes).
NNS_MAX_BUFFERED = max(
    nns.HANDSHAKE_HEADER_SIZE + nns.MAX_HANDSHAKE_PAYLOAD, nns.RECORD_HEADER_SIZE + nns.MAX_RECORD_PAYLOAD
)


@pytest.fixture(scope="module")
def client_first_messages(ntlm_users: NTLMUsers, _offline_krb5_config: str) -> dict[str, bytes]:
    """The genuine first handshake message of an NTLM and a SPNEGO client (Kerberos kept off the network)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KRB5_CONFIG", _offline_krb5_config)
        return {p: connection_pair(ntlm_users, protocol=p)[0].data_to_send() for p in ("ntlm", "negotiate")}


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split ``data`` at the (sorted, deduplicated) positions ``cuts`` taken modulo len+1."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


chunk_cuts = st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=40)


def record_header(min_size: int = 0, max_size: int = 0x20000, byteorder: str = "little") -> st.SearchStrategy[bytes]:
    """uint32 length headers in the given range and byte order."""
    return st.integers(min_size, max_size).map(lambda n: n.to_bytes(4, byteorder))  # type: ignore[arg-type]


# Bytes that look like frames often enough to reach the length and payload paths, not only the header checks.
nns_record_like = st.lists(
    st.one_of(
        st.binary(max_size=64),
        st.tuples(record_header(0, 70), st.binary(max_size=80)).map(lambda t: t[0] + t[1]),
        st.sampled_from([b"\x05\x00\x00\x00", b"\x00\x00\x01\x00", b"\x01\x00\x01\x00", b"\x04\x00\x00\x00"]),
    ),
    max_size=12,
).map(b"".join)

handshake_like = st.lists(
    st.one_of(
        st.binary(max_size=64),
        st.tuples(
            st.sampled_from([0x14, 0x15, 0x16, 0x17, 0x00]),
            st.sampled_from([b"\x01\x00", b"\x01\x01", b"\x02\x00"]),
            st.integers(0, 80),
            st.binary(max_size=80),
        ).map(lambda t: bytes([t[0]]) + t[1] + t[2].to_bytes(2, "big") + t[3]),
    ),
    max_size=8,
).map(b"".join)


# -- codecs -------------------------------------------------------------------------------------------------------

Parse = Callable[[bytes, int], "tuple[Any, int] | None"]


def _parse_stream(parse: Parse, data: bytes) -> tuple[list[Any], int, str | None]:
    """Parse frames from the start of ``data``: (frames, end of the last one, FramingError message or None)."""
    frames: list[Any] = []
    position = 0
    try:
        while (parsed := parse(data, position)) is not None:
            frame, position = parsed
            frames.append(frame)
    except FramingError as exc:
        return frames, position, str(exc)
    return frames, position, None


def _check_any_cut(parse: Parse, data: bytes, cuts: list[int], max_frame: int) -> tuple[list[Any], int, str | None]:
    """Parse ``data`` whole and every prefix ending at a cut: the same frames and error, whatever the cut.

    A prefix yields a prefix of the frames; if it fails, the whole input fails the same way after the same frames;
    if it does not, the bytes held back are less than one frame (``max_frame``). Returns the whole outcome.
    """
    whole = _parse_stream(parse, data)
    for piece_end in itertools.accumulate(len(p) for p in chunked(data, cuts)):
        frames, end, error = _parse_stream(parse, data[:piece_end])
        assert frames == whole[0][: len(frames)]
        if error is not None:
            assert (frames, end, error) == whole
        else:
            assert piece_end - end < max_frame
    return whole


@FUZZ
@given(data=st.one_of(st.binary(max_size=600), nns_record_like), cuts=chunk_cuts)
def test_nns_records_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    """Arbitrary bytes as MS-NNS records: payloads within 5..65,536 that re-encode to the input, whatever the cut."""
    codec = nns.NNSRecordCodec()
    frames, _, _ = _check_any_cut(codec.parse, data, cuts, nns.RECORD_HEADER_SIZE + nns.MAX_RECORD_PAYLOAD)
    for payload in frames:
        assert nns.MIN_RECORD_PAYLOAD <= len(payload) <= nns.MAX_RECORD_PAYLOAD
    assert data.startswith(b"".join(codec.encode_header(len(f)) + f for f in frames))


@FUZZ
@given(
    payloads=st.lists(st.binary(min_size=5, max_size=300), max_size=10),
    tail=st.binary(max_size=40),
    cuts=chunk_cuts,
)
def test_nns_valid_records_then_garbage(payloads: list[bytes], tail: bytes, cuts: list[int]) -> None:
    """Valid records in any chunking parse exactly; whatever follows them, they come out first and whole."""
    codec = nns.NNSRecordCodec()
    wire = b"".join(codec.encode_header(len(p)) + p for p in payloads)
    assert _check_any_cut(codec.parse, wire, cuts, 4 + 300) == (payloads, len(wire), None)
    frames, end, _ = _check_any_cut(codec.parse, wire + tail, cuts, 4 + nns.MAX_RECORD_PAYLOAD)
    assert frames[: len(payloads)] == payloads
    assert end >= len(wire)


@FUZZ
@given(
    data=st.one_of(st.binary(max_size=600), handshake_like),
    cuts=chunk_cuts,
    prefix=st.sampled_from([b"", b"\x16\x01\x00", b"\x14\x01\x00", b"\x15\x01\x00\x00\x08"]),
)
def test_nns_handshake_arbitrary_bytes(data: bytes, cuts: list[int], prefix: bytes) -> None:
    """Arbitrary bytes as handshake messages: known ids with int error codes that re-encode, whatever the cut."""
    data = prefix + data
    frames, _, _ = _check_any_cut(
        nns.parse_handshake, data, cuts, nns.HANDSHAKE_HEADER_SIZE + nns.MAX_HANDSHAKE_PAYLOAD
    )
    for frame in frames:
        assert isinstance(frame, nns.HandshakeFrame)
        assert isinstance(frame.message_id, nns.MessageId)
        assert isinstance(frame.error_code, int)
        assert frame.describe().startswith(frame.message_id.name)
    assert data.startswith(b"".join(nns.encode_handshake(f.message_id, f.payload) for f in frames))


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=600),
        st.lists(
            st.tuples(record_header(0, 120, "big"), st.binary(max_size=130)).map(lambda t: t[0] + t[1]), max_size=8
        ).map(b"".join),
    ),
    cuts=chunk_cuts,
    max_payload=st.one_of(st.integers(1, 100), st.sampled_from([1, 5, 100, 0xFFFF, sasl.DEFAULT_MAX_BUFFER])),
)
def test_sasl_records_arbitrary_bytes(data: bytes, cuts: list[int], max_payload: int) -> None:
    """Arbitrary bytes as SASL records: tokens within 1..max_payload, whatever the cut."""
    codec = sasl.SaslRecordCodec(max_payload)
    frames, _, _ = _check_any_cut(codec.parse, data, cuts, 4 + max_payload)
    assert all(1 <= len(token) <= max_payload for token in frames)


@FUZZ
@given(message=st.binary(max_size=40))
def test_sasl_layer_message_arbitrary_bytes(message: bytes) -> None:
    """A layer message decodes (and re-encodes with unknown bits dropped) or fails with FramingError only."""
    try:
        offer = sasl.decode_layer_message(message)
    except FramingError:
        assert len(message) < 4 or message[0] & 7 == 0
        return
    assert sasl.decode_layer_message(sasl.encode_layer_message(offer)) == offer
    assert sasl.encode_layer_message(offer) == bytes([message[0] & 7]) + message[1:]


# -- Connection ---------------------------------------------------------------------------------------------------


def _data(events: list[Any]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, Data)]


ntlm_authenticate_like = st.binary(max_size=200).map(lambda b: b"NTLMSSP\x00\x03\x00\x00\x00" + b)


@FUZZ
@given(
    prefix=st.sampled_from(
        [
            b"",
            "first message",
            b"\x16\x01\x00",
            b"\x14\x01\x00",
            b"\x16\x01\x00\x00\x20NTLMSSP\x00\x01\x00\x00\x00",
            b"\x16\x01\x00\x00\x10\x60",
        ]
    ),
    garbage=st.one_of(
        st.binary(max_size=300),
        handshake_like,
        st.tuples(st.sampled_from([0x14, 0x16]), st.one_of(st.binary(max_size=300), ntlm_authenticate_like)).map(
            lambda t: nns.encode_handshake(nns.MessageId(t[0]), t[1])
        ),
    ),
    cuts=chunk_cuts,
    eof=st.booleans(),
    protocol=st.sampled_from(["ntlm", "negotiate"]),
)
def test_handshaking_server_arbitrary_input(
    ntlm_users: NTLMUsers,
    client_first_messages: dict[str, bytes],
    prefix: bytes | str,
    garbage: bytes,
    cuts: list[int],
    eof: bool,
    protocol: str,
) -> None:
    """A server fed garbage (after nothing, a header, or a genuine first message) never completes nor delivers
    data; a failure breaks it and queues an Error frame after any reply."""
    server = Connection(SecurityContext.server(credentials=ntlm_users.server_credentials(), protocol=protocol))  # type: ignore[arg-type]
    start = client_first_messages[protocol] if isinstance(prefix, str) else prefix
    events, error = feed_pieces(server, chunked(start + garbage, cuts), eof=eof, max_buffered=NNS_MAX_BUFFERED)
    assert events == []
    assert server.state is not State.ESTABLISHED
    if error is not None:
        assert server.state is State.BROKEN and server.broken_cause is error
        out = server.data_to_send()
        if not isinstance(error, HandshakeError):
            # Any reply already queued (the CHALLENGE) comes first; the Error frame is last.
            assert out[-13:-8] == bytes.fromhex("1501000008")


@FUZZ
@given(
    protocol=st.sampled_from(["ntlm", "negotiate"]),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)), max_size=4),
    tail=st.binary(max_size=20),
    cuts=chunk_cuts,
    eof=st.booleans(),
)
def test_server_mutated_first_message(
    ntlm_users: NTLMUsers,
    client_first_messages: dict[str, bytes],
    protocol: str,
    flips: list[tuple[int, int]],
    tail: bytes,
    cuts: list[int],
    eof: bool,
) -> None:
    """A genuine first message with flipped bits: typed errors only, never a completed handshake or data."""
    message = bytearray(client_first_messages[protocol])
    for position, mask in flips:
        message[position % len(message)] ^= mask
    server = Connection(SecurityContext.server(credentials=ntlm_users.server_credentials(), protocol=protocol))  # type: ignore[arg-type]
    events, _ = feed_pieces(server, chunked(bytes(message) + tail, cuts), eof=eof, max_buffered=NNS_MAX_BUFFERED)
    assert _data(events) == []
    assert not any(isinstance(e, HandshakeComplete) for e in events)


@FUZZ
@given(
    flips=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)), min_size=1, max_size=4
    ),
    cuts=chunk_cuts,
)
def test_server_mutated_authentication(ntlm_users: NTLMUsers, flips: list[tuple[int, int]], cuts: list[int]) -> None:
    """A real NTLM handshake whose AUTHENTICATE is corrupted: only typed errors, never a forged identity or data."""
    client, server = connection_pair(ntlm_users)
    assert feed_pieces(server, [client.data_to_send()]) == ([], None)
    assert feed_pieces(client, [server.data_to_send()]) == ([], None)
    last = bytearray(client.data_to_send())
    for position, mask in flips:
        last[position % len(last)] ^= mask
    events, error = feed_pieces(server, chunked(bytes(last), cuts), max_buffered=NNS_MAX_BUFFERED)
    assert _data(events) == []
    if error is None and server.info is not None:
        # Only bytes outside the authenticated token (e.g. 0x14 <-> 0x16) can change without failing the MIC.
        assert server.info.peer_identity == "NEGOTIATE-TEST\\alice"


@FUZZ
@given(
    plan=st.lists(
        st.one_of(
            st.binary(min_size=1, max_size=200).map(lambda b: ("send", b)),
            st.one_of(st.binary(min_size=1, max_size=40), nns_record_like.filter(bool)).map(lambda b: ("junk", b)),
        ),
        min_size=1,
        max_size=8,
    ),
    cuts=chunk_cuts,
    eof=st.booleans(),
    level=st.sampled_from(["sign", "encrypt_and_sign"]),
)
def test_established_records_interleaved_with_garbage(
    ntlm_users: NTLMUsers, plan: list[tuple[str, bytes]], cuts: list[int], eof: bool, level: str
) -> None:
    """Records and garbage in any order and chunking: whole records, in order, only ones that were sent, and every
    record before the first garbage; garbage that the EOF completes breaks the stream."""
    client, server = connection_pair(ntlm_users, protection_level=level)
    handshake(client, server)
    sent: list[bytes] = []
    wire = bytearray()
    for kind, item in plan:
        if kind == "send":
            sent.append(item)
            wire += client.send(item)
        else:
            wire += item
    events, error = feed_pieces(server, chunked(bytes(wire), cuts), eof=eof, max_buffered=NNS_MAX_BUFFERED)
    delivered = _data(events)
    # Records are delivered whole, in order, and only a prefix of what was sent.
    assert delivered == sent[: len(delivered)]
    assert b"".join(sent).startswith(b"".join(delivered))
    if any(kind == "junk" for kind, _ in plan):
        first_junk = next(i for i, (kind, _) in enumerate(plan) if kind == "junk")
        valid_before = sum(1 for kind, _ in plan[:first_junk] if kind == "send")
        assert len(delivered) <= valid_before
        # records before the first garbage are always delivered, whatever follows
        assert delivered[:valid_before] == sent[:valid_before]
        assert len(delivered) == valid_before
        if eof or error is not None:
            assert error is not None and server.state is State.BROKEN
    else:
        assert error is None and delivered == sent
        assert not eof or isinstance(events[-1], EndOfStream)


@FUZZ
@given(
    data=st.one_of(st.binary(max_size=300), nns_record_like),
    cuts=chunk_cuts,
    eof=st.booleans(),
    level=st.sampled_from(["sign", "encrypt_and_sign"]),
)
def test_established_arbitrary_bytes(
    ntlm_users: NTLMUsers, data: bytes, cuts: list[int], eof: bool, level: str
) -> None:
    """Arbitrary bytes after the handshake: never any data, and the same outcome (error type and text) in one
    piece or chunked; a waiting connection holds less than one record."""
    outcomes = []
    for pieces in (chunked(data, cuts), [data] if data else []):  # b"" would mean EOF
        _, server = established(ntlm_users, protection_level=level)
        events, error = feed_pieces(server, pieces, eof=eof, max_buffered=NNS_MAX_BUFFERED)
        assert _data(events) == []
        assert not any(isinstance(e, Data) for e in events)
        assert server.buffered <= nns.RECORD_HEADER_SIZE + nns.MAX_RECORD_PAYLOAD
        outcomes.append((len(events), type(error), str(error)))
    assert outcomes[0] == outcomes[1]
