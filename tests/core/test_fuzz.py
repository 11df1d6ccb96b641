"""Property-based fuzzing of the codecs and of Connection.receive_data/next_event.

Profiles: ``dev`` (200 examples, the default) and ``ci`` (10,000 examples, chosen when the ``CI`` environment
variable is set). Properties: only our typed errors escape, decoders never hold more than one frame plus a
header, and a Connection never delivers bytes that were not sent by the authenticated peer, in order.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from negotiate_stream import (
    NEED_DATA,
    Connection,
    Data,
    EndOfStream,
    HandshakeComplete,
    HandshakeError,
    NegotiateError,
    SecurityContext,
    State,
)
from negotiate_stream._framing import nns, sasl
from negotiate_stream.errors import FramingError
from negotiate_stream.testing import NTLMUsers, connection_pair, handshake

settings.register_profile("dev", max_examples=200, deadline=None)
settings.register_profile(
    "ci", max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
PROFILE = settings.get_profile("ci" if os.environ.get("CI") else "dev")

# The module's own accounts: hypothesis reruns examples, so nothing here may depend on function-scoped fixtures.
USERS = NTLMUsers.generate("fuzzer")


def _client_first_token() -> bytes:
    client, _ = connection_pair(USERS)
    return client.data_to_send()


NEGOTIATE_FLIGHT = _client_first_token()


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split ``data`` at the (clamped, sorted) cut points."""
    points = sorted({min(max(c, 0), len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


cut_lists = st.lists(st.integers(min_value=0, max_value=1 << 17), max_size=30)


def record_header(min_size: int = 0, max_size: int = 0x20000, byteorder: str = "little") -> st.SearchStrategy[bytes]:
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


def _run_decoder(decoder: nns.FrameDecoder[Any], data: bytes, cuts: list[int], limit: int) -> list[Any]:
    frames: list[Any] = []
    try:
        for chunk in chunked(data, cuts):
            frames += decoder.feed(chunk)
            assert decoder.buffered <= limit
    except FramingError:
        pass
    return frames


@settings(PROFILE)
@given(data=st.one_of(st.binary(max_size=600), nns_record_like), cuts=cut_lists)
def test_nns_record_decoder_arbitrary_input(data: bytes, cuts: list[int]) -> None:
    limit = nns.RECORD_HEADER_SIZE + nns.MAX_RECORD_PAYLOAD
    for payload in _run_decoder(nns.record_decoder(), data, cuts, limit):
        assert nns.MIN_RECORD_PAYLOAD <= len(payload) <= nns.MAX_RECORD_PAYLOAD


@settings(PROFILE)
@given(data=st.one_of(st.binary(max_size=600), handshake_like), cuts=cut_lists)
def test_nns_handshake_decoder_arbitrary_input(data: bytes, cuts: list[int]) -> None:
    limit = nns.HANDSHAKE_HEADER_SIZE + nns.MAX_HANDSHAKE_PAYLOAD
    for frame in _run_decoder(nns.handshake_decoder(), data, cuts, limit):
        assert isinstance(frame.message_id, nns.MessageId)
        assert isinstance(frame.error_code, int)


@settings(PROFILE)
@given(
    data=st.one_of(
        st.binary(max_size=600),
        st.lists(
            st.tuples(record_header(0, 120, "big"), st.binary(max_size=130)).map(lambda t: t[0] + t[1]), max_size=8
        ).map(b"".join),
    ),
    cuts=cut_lists,
    max_payload=st.integers(1, 100),
)
def test_sasl_record_decoder_arbitrary_input(data: bytes, cuts: list[int], max_payload: int) -> None:
    for token in _run_decoder(sasl.record_decoder(max_payload), data, cuts, 4 + max_payload):
        assert 1 <= len(token) <= max_payload


@settings(PROFILE)
@given(
    payloads=st.lists(st.binary(min_size=5, max_size=300), max_size=10),
    cuts=cut_lists,
)
def test_nns_record_decoder_valid_stream_any_chunking(payloads: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(nns.NNSRecordCodec.encode_header(len(p)) + p for p in payloads)
    decoder = nns.record_decoder()
    frames: list[bytes] = []
    for chunk in chunked(wire, cuts):
        frames += decoder.feed(chunk)
    assert frames == payloads
    assert decoder.consumed == len(wire) and decoder.buffered == 0


@settings(PROFILE)
@given(layer_message=st.binary(max_size=12))
def test_sasl_layer_message_arbitrary_input(layer_message: bytes) -> None:
    try:
        offer = sasl.decode_layer_message(layer_message)
    except FramingError:
        return
    assert sasl.encode_layer_message(offer) == bytes([layer_message[0] & 7]) + layer_message[1:]


# -- Connection ---------------------------------------------------------------------------------------------


def _pump(conn: Connection, chunks: list[bytes], eof: bool) -> tuple[list[bytes], NegotiateError | None]:
    delivered: list[bytes] = []
    try:
        for chunk in [*chunks, *([b""] if eof else [])]:
            conn.receive_data(chunk)
            while True:
                event = conn.next_event()
                if event is NEED_DATA or isinstance(event, EndOfStream):
                    break
                if isinstance(event, Data):
                    delivered.append(event.data)
                else:
                    assert isinstance(event, HandshakeComplete)
    except NegotiateError as exc:
        return delivered, exc
    return delivered, None


ntlm_authenticate_like = st.binary(max_size=200).map(lambda b: b"NTLMSSP\x00\x03\x00\x00\x00" + b)


@settings(PROFILE)
@given(
    prefix=st.sampled_from([b"", NEGOTIATE_FLIGHT]),
    garbage=st.one_of(
        st.binary(max_size=300),
        handshake_like,
        st.tuples(st.sampled_from([0x14, 0x16]), st.one_of(st.binary(max_size=300), ntlm_authenticate_like)).map(
            lambda t: nns.encode_handshake(nns.MessageId(t[0]), t[1])
        ),
    ),
    cuts=cut_lists,
    eof=st.booleans(),
    protocol=st.sampled_from(["ntlm", "negotiate"]),
)
def test_handshaking_server_arbitrary_input(
    prefix: bytes, garbage: bytes, cuts: list[int], eof: bool, protocol: str
) -> None:
    server = Connection(SecurityContext.server(credentials=USERS.server_credentials(), protocol=protocol))  # type: ignore[arg-type]
    if protocol == "negotiate" and prefix:
        prefix = b""  # the captured first flight is raw NTLM; SPNEGO servers get garbage from the start
    delivered, error = _pump(server, chunked(prefix + garbage, cuts), eof)
    assert delivered == []
    assert server.state is not State.ESTABLISHED
    if error is not None:
        assert server.state is State.BROKEN and server.broken_cause is error
        out = server.data_to_send()
        if not isinstance(error, HandshakeError):
            # Any reply already queued (the CHALLENGE) comes first; the Error frame is last.
            assert out[-13:-8] == bytes.fromhex("1501000008")


@settings(PROFILE)
@given(
    plan=st.lists(
        st.one_of(
            st.binary(min_size=1, max_size=120).map(lambda b: ("send", b)),
            st.one_of(st.binary(min_size=1, max_size=40), nns_record_like.filter(bool)).map(lambda b: ("junk", b)),
        ),
        min_size=1,
        max_size=8,
    ),
    cuts=cut_lists,
    eof=st.booleans(),
    level=st.sampled_from(["sign", "encrypt_and_sign"]),
)
def test_established_connection_delivers_only_what_was_sent(
    plan: list[tuple[str, bytes]], cuts: list[int], eof: bool, level: str
) -> None:
    client, server = connection_pair(USERS, protection_level=level)
    handshake(client, server)
    sent: list[bytes] = []
    wire = bytearray()
    for kind, item in plan:
        if kind == "send":
            sent.append(item)
            wire += client.send(item)
        else:
            wire += item
    delivered, error = _pump(server, chunked(bytes(wire), cuts), eof)
    # Records are delivered whole, in order, and only a prefix of what was sent.
    assert delivered == sent[: len(delivered)]
    if any(kind == "junk" for kind, _ in plan):
        first_junk = next(i for i, (kind, _) in enumerate(plan) if kind == "junk")
        valid_before = sum(1 for kind, _ in plan[:first_junk] if kind == "send")
        assert len(delivered) <= valid_before
        if eof or error is not None:
            assert error is not None and server.state is State.BROKEN
    else:
        assert error is None and delivered == sent
