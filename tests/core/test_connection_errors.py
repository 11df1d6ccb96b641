"""Connection failure paths in memory: rejected handshakes, Error frames, bad frames and record lengths, truncation,
broken and closed states, API misuse, and errors that survive copy and pickle."""

from __future__ import annotations

import copy
import pickle
import struct
from collections.abc import Callable

import pytest

from negotiate_stream import (
    NEED_DATA,
    AuthenticationError,
    Connection,
    Data,
    EndOfStream,
    FramingError,
    HandshakeError,
    IntegrityError,
    LocalProtocolError,
    NegotiateError,
    ProtectionLevelError,
    State,
    StreamClosedError,
    TruncatedStreamError,
)
from negotiate_stream._framing import nns
from negotiate_stream.errors import (
    E_FAIL,
    ERROR_TRUST_FAILURE,
    SEC_E_INCOMPLETE_MESSAGE,
    SEC_E_INTERNAL_ERROR,
    SEC_E_INVALID_TOKEN,
    SEC_E_LOGON_DENIED,
)
from negotiate_stream.testing import NTLMUsers, connection_pair, exchange, handshake
from tests.support.core import assert_broken_everywhere, context_pair, drain, established, feed

ERROR_FRAME_HEADER = b"\x15\x01\x00\x00\x08"
NTLM_AUTHENTICATE = b"NTLMSSP\x00\x03\x00\x00\x00"


# -- rejected handshakes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("byteorder", ["big", "little"])
@pytest.mark.parametrize("protocol", ["ntlm", "negotiate"])
def test_wrong_password(ntlm_users: NTLMUsers, protocol: str, byteorder: str) -> None:
    """A wrong password: SEC_E_LOGON_DENIED on the server, in its Error frame, and as the client's HandshakeError."""
    client_ctx, server_ctx = context_pair(
        ntlm_users,
        protocol=protocol,
        client_options={"credentials": ntlm_users.client_credentials(password="not the password")},
    )
    client = Connection(client_ctx)
    server = Connection(server_ctx, error_byteorder=byteorder)  # type: ignore[arg-type]
    server.receive_data(client.data_to_send())
    assert drain(server) == []
    client.receive_data(server.data_to_send())
    assert drain(client) == []
    authenticate = client.data_to_send()
    assert NTLM_AUTHENTICATE in authenticate
    server.receive_data(authenticate)
    with pytest.raises(AuthenticationError) as server_error:
        server.next_event()
    assert type(server_error.value) is AuthenticationError
    assert server_error.value.status == SEC_E_LOGON_DENIED
    assert "check user name, domain and password" in str(server_error.value)
    error_frame = server.data_to_send()
    assert error_frame == ERROR_FRAME_HEADER + SEC_E_LOGON_DENIED.to_bytes(8, byteorder)  # type: ignore[arg-type]
    assert server.data_to_send() == b""
    assert server.info is None
    assert_broken_everywhere(server, server_error.value)

    client.receive_data(error_frame)
    with pytest.raises(HandshakeError) as client_error:
        client.next_event()
    assert client_error.value.error_code == SEC_E_LOGON_DENIED
    assert client_error.value.status == SEC_E_LOGON_DENIED
    assert isinstance(client_error.value, AuthenticationError)
    assert "SEC_E_LOGON_DENIED" in str(client_error.value)
    # The client got the peer's verdict: it never answers an Error frame with one of its own.
    assert client.data_to_send() == b""
    assert_broken_everywhere(client, client_error.value)


def test_unknown_user(ntlm_users: NTLMUsers) -> None:
    """An account the acceptor does not know is SEC_E_LOGON_DENIED, with an Error frame for the client."""
    stranger = ntlm_users.client_credentials().__class__(username="mallory", password="x", domain="EVIL")
    client, server = connection_pair(ntlm_users, client_options={"credentials": stranger})
    with pytest.raises(AuthenticationError) as info:
        handshake(client, server)
    assert info.value.status == SEC_E_LOGON_DENIED
    assert server.state is State.BROKEN
    assert server.data_to_send()[:5] == ERROR_FRAME_HEADER


@pytest.mark.parametrize("byteorder", ["big", "little"])
@pytest.mark.parametrize(
    ("code", "name"),
    [
        (SEC_E_LOGON_DENIED, "SEC_E_LOGON_DENIED"),
        (ERROR_TRUST_FAILURE, "ERROR_TRUST_FAILURE"),
        (E_FAIL, "E_FAIL"),
        (0x0BADC0DE, "0x0BADC0DE"),
        (0x12345678, "0x12345678"),
    ],
)
def test_error_frame_from_server_in_either_byte_order(
    ntlm_users: NTLMUsers, code: int, name: str, byteorder: str
) -> None:
    """A peer's Error frame in either byte order (even byte by byte) is a HandshakeError naming its code."""
    client, _ = connection_pair(ntlm_users)
    client.data_to_send()
    with pytest.raises(HandshakeError) as info:
        feed(client, nns.encode_error(code, byteorder=byteorder), chunk=1)
    assert info.value.error_code == code
    assert name in str(info.value)


def test_little_endian_error_frames_option(ntlm_users: NTLMUsers) -> None:
    """error_byteorder="little" writes the code little-endian in the first 4 bytes (the .NET 8+ layout)."""
    _, server_ctx = context_pair(ntlm_users)
    server = Connection(server_ctx, error_byteorder="little")
    server.receive_data(b"\x16\x01\x00\x00\x03abc")
    with pytest.raises(AuthenticationError):
        server.next_event()
    frame = server.data_to_send()
    assert frame[:5] == ERROR_FRAME_HEADER
    assert frame[5:] == SEC_E_INVALID_TOKEN.to_bytes(4, "little") + bytes(4)


def test_protection_level_mismatch_sends_trust_failure(ntlm_users: NTLMUsers) -> None:
    """A server requiring sealing refuses a sign-only client with ERROR_TRUST_FAILURE, as .NET does."""
    client, server = connection_pair(
        ntlm_users, client_options={"protection_level": "sign"}, server_options={"protection_level": "encrypt"}
    )
    with pytest.raises(ProtectionLevelError) as info:
        handshake(client, server)
    assert info.value.status == ERROR_TRUST_FAILURE
    frame = server.data_to_send()
    assert frame == bytes.fromhex("1501000008 00000000 000006fe")
    assert frame == ERROR_FRAME_HEADER + ERROR_TRUST_FAILURE.to_bytes(8, "big")
    client.receive_data(frame)
    with pytest.raises(HandshakeError) as client_info:
        client.next_event()
    assert client_info.value.error_code == ERROR_TRUST_FAILURE
    assert client.state is State.BROKEN


def test_require_mutual_auth_fails_on_the_client_before_authenticate_is_sent(ntlm_users: NTLMUsers) -> None:
    """NTLM cannot authenticate the server: a client requiring it sends an Error frame instead of AUTHENTICATE."""
    client, server = connection_pair(ntlm_users, client_options={"require_mutual_auth": True})
    server.receive_data(client.data_to_send())
    drain(server)
    client.receive_data(server.data_to_send())
    with pytest.raises(AuthenticationError, match="mutual authentication") as info:
        client.next_event()
    out = client.data_to_send()
    assert NTLM_AUTHENTICATE not in out
    assert out == ERROR_FRAME_HEADER + SEC_E_LOGON_DENIED.to_bytes(8, "big")
    assert_broken_everywhere(client, info.value)
    server.receive_data(out)
    with pytest.raises(HandshakeError) as server_info:
        server.next_event()
    assert server_info.value.error_code == SEC_E_LOGON_DENIED
    assert server.data_to_send() == b""


def test_ntlm_fallback_refused_by_connection(ntlm_users: NTLMUsers) -> None:
    """A Negotiate client with allow_ntlm_fallback=False against an NTLM-only acceptor fails to start."""
    with pytest.raises(AuthenticationError, match="NTLM fallback is disabled"):
        connection_pair(ntlm_users, protocol="negotiate", client_options={"allow_ntlm_fallback": False})


def test_server_refusing_ntlm_fallback(ntlm_users: NTLMUsers) -> None:
    """A Negotiate server with allow_ntlm_fallback=False refuses an NTLM client before any CHALLENGE goes out."""
    client, server = connection_pair(ntlm_users, protocol="negotiate", server_options={"allow_ntlm_fallback": False})
    server.receive_data(client.data_to_send())
    with pytest.raises(AuthenticationError, match="NTLM fallback is disabled") as info:
        server.next_event()
    frame = server.data_to_send()
    assert frame == ERROR_FRAME_HEADER + SEC_E_LOGON_DENIED.to_bytes(8, "big")
    assert b"NTLMSSP" not in frame  # no CHALLENGE went out
    assert_broken_everywhere(server, info.value)
    client.receive_data(frame)
    with pytest.raises(HandshakeError):
        client.next_event()


@pytest.mark.parametrize("protocol", ["ntlm", "negotiate"])
@pytest.mark.parametrize(
    "token",
    [
        b"hello",
        b"not an NTLM message",
        b"NTLMSSP\x00\x01",
        b"NTLMSSP\x00\x03\x00\x00\x00" + bytes(60),
        b"\x60\x03\x06\x01\x00",
        b"\xff" * 300,
    ],
)
def test_garbage_handshake_token(ntlm_users: NTLMUsers, protocol: str, token: bytes) -> None:
    """A well-framed but meaningless token is an AuthenticationError whose status goes out in the Error frame."""
    _, server = connection_pair(ntlm_users, protocol=protocol)
    server.receive_data(nns.encode_handshake(nns.MessageId.HANDSHAKE_IN_PROGRESS, token))
    with pytest.raises(AuthenticationError) as info:
        server.next_event()
    status = info.value.status
    assert status in (SEC_E_INVALID_TOKEN, SEC_E_LOGON_DENIED)
    frame = server.data_to_send()
    assert frame[:5] == ERROR_FRAME_HEADER
    assert nns.decode_error_code(frame[5:]) == status
    assert_broken_everywhere(server, info.value)


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        pytest.param(b"\x00", None, id="id-0x00"),
        pytest.param(b"\x17", None, id="id-0x17-first-byte"),  # rejected on the first byte
        pytest.param(b"\x17\x01\x00\x00\x00", None, id="id-0x17"),
        pytest.param(b"\x16\x02\x00", None, id="version-2.0-header"),
        pytest.param(b"\x16\x02\x00\x00\x01x", None, id="version-2.0"),
        pytest.param(b"\x16\x01\x01", None, id="version-1.1"),
        pytest.param(b"\x16\x01\x00\x00\x00", "empty handshake token", id="empty-in-progress"),
        pytest.param(b"\x14\x01\x00\x00\x00", "empty handshake token", id="empty-done"),
    ],
)
def test_bad_handshake_frames_rejected_early(ntlm_users: NTLMUsers, wire: bytes, match: str | None) -> None:
    """Unknown ids, other versions and empty tokens are FramingErrors answered with SEC_E_INVALID_TOKEN."""
    _, server = connection_pair(ntlm_users)
    server.receive_data(wire)
    with pytest.raises(FramingError, match=match) as info:
        server.next_event()
    assert info.value.status == SEC_E_INVALID_TOKEN
    assert server.data_to_send() == ERROR_FRAME_HEADER + SEC_E_INVALID_TOKEN.to_bytes(8, "big")
    assert_broken_everywhere(server, info.value)


def test_token_after_context_complete(ntlm_users: NTLMUsers) -> None:
    """Another InProgress token after our context completed is a FramingError that breaks the stream."""
    client, server = connection_pair(ntlm_users)
    exchange(client, server)
    exchange(server, client)  # the NTLM client is now complete, waiting for the server's HandshakeDone
    client.data_to_send()
    client.receive_data(nns.encode_handshake(nns.MessageId.HANDSHAKE_IN_PROGRESS, b"more please"))
    with pytest.raises(FramingError, match="after our context was complete"):
        client.next_event()
    assert client.state is State.BROKEN


def test_record_before_handshake_done(ntlm_users: NTLMUsers) -> None:
    """A data record where a handshake message belongs is a FramingError."""
    _, server = connection_pair(ntlm_users)
    server.receive_data((20).to_bytes(4, "little") + b"\x01" * 20)
    with pytest.raises(FramingError):
        server.next_event()
    assert server.state is State.BROKEN


def test_oversize_outgoing_handshake_token_is_a_typed_error(ntlm_users: NTLMUsers) -> None:
    """Regression: a ValueError from encode_handshake escaped next_event(), leaving the stream HANDSHAKING."""
    client, server = connection_pair(ntlm_users)
    server.receive_data(client.data_to_send())
    drain(server)
    parsed = nns.parse_handshake(server.data_to_send())
    assert parsed is not None
    challenge = parsed[0].payload
    # Rebuild the CHALLENGE with ~64 KiB of extra AV pairs in its target info; the client copies the target info
    # into its NTLMv2 response, so its AUTHENTICATE message no longer fits an MS-NNS handshake message.
    name_len, _, name_offset = struct.unpack_from("<HHI", challenge, 12)
    info_len, _, info_offset = struct.unpack_from("<HHI", challenge, 40)
    target_name = challenge[name_offset : name_offset + name_len]
    target_info = challenge[info_offset : info_offset + info_len]
    assert target_info[-4:] == b"\x00\x00\x00\x00"  # MsvAvEOL

    def av_pair(av_id: int, value: bytes) -> bytes:
        """One MS-NLMP AV_PAIR: id, length, value."""
        return struct.pack("<HH", av_id, len(value)) + value

    padding = av_pair(5, "a".encode("utf-16-le") * 16350) + av_pair(3, "b".encode("utf-16-le") * 16300)
    target_info = target_info[:-4] + padding + target_info[-4:]
    header = bytearray(challenge[:56])
    struct.pack_into("<HHI", header, 12, len(target_name), len(target_name), 56)
    struct.pack_into("<HHI", header, 40, len(target_info), len(target_info), 56 + len(target_name))
    client.receive_data(
        nns.encode_handshake(nns.MessageId.HANDSHAKE_IN_PROGRESS, bytes(header) + target_name + target_info)
    )
    with pytest.raises(AuthenticationError, match="exceeds the MS-NNS limit") as info:
        client.next_event()
    assert info.value.status == SEC_E_INTERNAL_ERROR
    assert client.data_to_send() == ERROR_FRAME_HEADER + SEC_E_INTERNAL_ERROR.to_bytes(8, "big")
    assert_broken_everywhere(client, info.value)


# -- framing limits ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 4, 0x10001, 0x7FFFFFFF, 0xFFFFFFFF], ids=lambda n: f"len={n:#x}")
def test_bad_record_length_rejected_from_header(ntlm_users: NTLMUsers, length: int) -> None:
    """An invalid record length is refused from the 4-byte header alone, before any payload is buffered."""
    _, server = established(ntlm_users)
    header = length.to_bytes(4, "little")
    for byte in header[:3]:
        server.receive_data(bytes([byte]))
        assert server.next_event() is NEED_DATA
    server.receive_data(header[3:])
    with pytest.raises(FramingError, match=f"announces {length} bytes") as info:
        server.next_event()
    assert server.buffered <= 4
    assert server.data_to_send() == b""  # no Error frame once the handshake is over
    assert_broken_everywhere(server, info.value)


@pytest.mark.parametrize("length", [0, 3, 0x10001])
def test_bad_record_length_with_payload_in_same_chunk(ntlm_users: NTLMUsers, length: int) -> None:
    """A valid record, then a bad length in the same chunk: the record is delivered, then FramingError."""
    client, server = established(ntlm_users)
    server.receive_data(client.send(b"ok") + length.to_bytes(4, "little") + b"\x00" * 64)
    assert server.next_event() == Data(b"ok")
    with pytest.raises(FramingError):
        server.next_event()
    assert server.state is State.BROKEN


@pytest.mark.parametrize("length", [5, 0x10000])
def test_record_length_bounds_accepted_until_verified(ntlm_users: NTLMUsers, length: int) -> None:
    """The smallest and largest valid record lengths make the decoder wait for the payload."""
    _, server = established(ntlm_users)
    server.receive_data(length.to_bytes(4, "little") + bytes(length - 1))
    assert server.next_event() is NEED_DATA


# -- EOF ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [0, 1, 4, 5, 10, 20])
def test_eof_during_handshake(ntlm_users: NTLMUsers, cut: int) -> None:
    """EOF before or inside the first handshake message is a TruncatedStreamError (SEC_E_INCOMPLETE_MESSAGE)."""
    client, server = connection_pair(ntlm_users)
    server.receive_data(client.data_to_send()[:cut])
    server.receive_data(b"")
    with pytest.raises(TruncatedStreamError, match="during the handshake") as info:
        server.next_event()
    assert info.value.status == SEC_E_INCOMPLETE_MESSAGE
    assert server.info is None
    assert_broken_everywhere(server, info.value)


def test_eof_on_client_after_its_final_message(ntlm_users: NTLMUsers) -> None:
    """The server hanging up instead of sending HandshakeDone is a TruncatedStreamError on the client."""
    client, server = connection_pair(ntlm_users)
    exchange(client, server)
    exchange(server, client)
    client.receive_data(b"")
    with pytest.raises(TruncatedStreamError):
        client.next_event()
    assert client.info is None


@pytest.mark.parametrize("eof_before_reading", [False, True], ids=["eof-late", "eof-early"])
@pytest.mark.parametrize("kept", [3, 5, 7, 8, 9, 19, 24, 26, 35])
@pytest.mark.parametrize("level", ["sign", "encrypt_and_sign"])
def test_eof_mid_record(ntlm_users: NTLMUsers, level: str, kept: int, eof_before_reading: bool) -> None:
    """EOF inside a record (its header or its payload) delivers the whole records first, then truncation."""
    client, server = established(ntlm_users, protection_level=level)
    first = client.send(b"complete")
    second = client.send(b"truncated record")
    assert len(second) == 36  # ``kept`` counts the bytes of it that arrive: 3 is inside the length header
    server.receive_data(first + second[:kept])
    if eof_before_reading:
        server.receive_data(b"")
    assert server.next_event() == Data(b"complete")
    if not eof_before_reading:
        assert server.next_event() is NEED_DATA
        server.receive_data(b"")
    with pytest.raises(TruncatedStreamError, match="middle of a MS-NNS record") as info:
        server.next_event()
    assert info.value.status == SEC_E_INCOMPLETE_MESSAGE
    assert_broken_everywhere(server, info.value)


def test_eof_event_on_established_stream_after_last_record(ntlm_users: NTLMUsers) -> None:
    """EOF after the last whole record yields the records and then EndOfStream."""
    client, server = established(ntlm_users, protection_level="sign")
    events = feed(server, client.send(b"a") + client.send(b"b"))
    server.receive_data(b"")
    events += drain(server)
    assert events == [Data(b"a"), Data(b"b"), EndOfStream()]


# -- API misuse, closed and broken states ------------------------------------------------------------------------


def test_send_before_handshake(ntlm_users: NTLMUsers) -> None:
    """send() before the handshake completes is a LocalProtocolError that does not break the stream."""
    client, server = connection_pair(ntlm_users)
    for conn in (client, server):
        with pytest.raises(LocalProtocolError, match="before the handshake completes"):
            conn.send(b"too early")
        assert conn.state is State.HANDSHAKING  # a caller's mistake does not break the stream
    exchange(client, server)
    with pytest.raises(LocalProtocolError):
        server.send(b"")
    handshake(client, server)
    assert client.state is State.ESTABLISHED


def test_after_close(ntlm_users: NTLMUsers) -> None:
    """After close() the state is CLOSED and every call raises StreamClosedError."""
    client, _server = established(ntlm_users)
    client.close()
    assert client.state is State.CLOSED
    for call in (lambda: client.send(b"x"), lambda: client.receive_data(b"x"), client.next_event):
        with pytest.raises(StreamClosedError, match="closed by this side"):
            call()
    with pytest.raises(StreamClosedError):
        client.send(b"")


def test_close_during_handshake(ntlm_users: NTLMUsers) -> None:
    """A Connection closed mid-handshake refuses next_event() with StreamClosedError."""
    client, _ = connection_pair(ntlm_users)
    client.close()
    with pytest.raises(StreamClosedError):
        client.next_event()


def test_broken_keeps_first_cause(ntlm_users: NTLMUsers) -> None:
    """A later mark_broken() does not replace the error that broke the stream first."""
    client, server = established(ntlm_users)
    record = bytearray(client.send(b"abc"))
    record[-1] ^= 1
    server.receive_data(bytes(record))
    with pytest.raises(IntegrityError) as info:
        server.next_event()
    server.mark_broken(RuntimeError("later"))
    assert server.broken_cause is info.value
    assert_broken_everywhere(server, info.value)


def test_mark_broken_from_io_layer(ntlm_users: NTLMUsers) -> None:
    """An I/O layer's mark_broken() breaks the Connection with that cause."""
    client, _ = established(ntlm_users)
    cause = ConnectionResetError("write interrupted mid-record")
    client.mark_broken(cause)
    assert_broken_everywhere(client, cause)


@pytest.mark.parametrize(
    "make",
    [
        lambda: AuthenticationError("denied", status=ERROR_TRUST_FAILURE),
        lambda: IntegrityError("altered"),
    ],
    ids=["AuthenticationError", "IntegrityError"],
)
def test_errors_survive_copy_and_pickle(make: Callable[[], NegotiateError]) -> None:
    """Our errors keep their type, status and message through copy.copy() and pickle."""
    original = make()
    for clone in (copy.copy(original), pickle.loads(pickle.dumps(original))):
        assert type(clone) is type(original)
        assert clone.status == original.status
        assert str(clone) == str(original)


def test_handshake_error_copy_and_pickle() -> None:
    """HandshakeError keeps its peer error code and message through copy.copy() and pickle."""
    original = HandshakeError(SEC_E_LOGON_DENIED)
    for clone in (copy.copy(original), pickle.loads(pickle.dumps(original))):
        assert type(clone) is HandshakeError
        assert clone.error_code == SEC_E_LOGON_DENIED
        assert str(clone) == str(original)
