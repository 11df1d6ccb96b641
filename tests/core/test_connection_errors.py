"""Connection failure paths: rejected credentials, Error frames, bad frames, truncation, misuse."""

from __future__ import annotations

import pytest

from negotiate_stream import (
    NEED_DATA,
    AuthenticationError,
    BrokenStreamError,
    Data,
    EndOfStream,
    FramingError,
    HandshakeError,
    LocalProtocolError,
    ProtectionLevelError,
    State,
    TruncatedStreamError,
)
from negotiate_stream._framing import nns
from negotiate_stream.errors import (
    E_FAIL,
    ERROR_TRUST_FAILURE,
    SEC_E_INCOMPLETE_MESSAGE,
    SEC_E_INVALID_TOKEN,
    SEC_E_LOGON_DENIED,
)
from negotiate_stream.testing import NTLMUsers, connection_pair, exchange

from tests.support.core import drain, established, feed


def _assert_broken_everywhere(conn, cause: BaseException) -> None:  # type: ignore[no-untyped-def]
    assert conn.state is State.BROKEN
    assert conn.broken_cause is cause
    for call in (conn.next_event, lambda: conn.receive_data(b"\x00"), lambda: conn.send(b"x")):
        with pytest.raises(BrokenStreamError) as info:
            call()
        assert info.value.__cause__ is cause
    # Twice: the broken state is sticky.
    with pytest.raises(BrokenStreamError):
        conn.next_event()


@pytest.mark.parametrize("protocol", ["ntlm", "negotiate"])
def test_wrong_password(ntlm_users: NTLMUsers, protocol: str) -> None:
    client, server = connection_pair(
        ntlm_users,
        protocol=protocol,
        client_options={"credentials": ntlm_users.client_credentials(password="not the password")},
    )
    exchange(client, server)
    exchange(server, client)
    server.receive_data(client.data_to_send())
    with pytest.raises(AuthenticationError) as server_error:
        server.next_event()
    assert server_error.value.status == SEC_E_LOGON_DENIED
    error_frame = server.data_to_send()
    assert error_frame == bytes.fromhex("1501000008") + SEC_E_LOGON_DENIED.to_bytes(8, "big")
    assert server.info is None
    _assert_broken_everywhere(server, server_error.value)
    client.receive_data(error_frame)
    with pytest.raises(HandshakeError) as client_error:
        client.next_event()
    assert client_error.value.error_code == SEC_E_LOGON_DENIED
    assert client_error.value.status == SEC_E_LOGON_DENIED
    assert isinstance(client_error.value, AuthenticationError)
    # The client got the peer's verdict: it does not answer with an Error frame of its own.
    assert client.data_to_send() == b""
    _assert_broken_everywhere(client, client_error.value)


@pytest.mark.parametrize("byteorder", ["big", "little"])
@pytest.mark.parametrize("code", [SEC_E_LOGON_DENIED, ERROR_TRUST_FAILURE, E_FAIL, 0x0BADC0DE])
def test_error_frame_from_server_in_either_byte_order(ntlm_users: NTLMUsers, code: int, byteorder: str) -> None:
    client, _ = connection_pair(ntlm_users)
    client.data_to_send()
    with pytest.raises(HandshakeError) as info:
        feed(client, nns.encode_error(code, byteorder=byteorder), chunk=1)
    assert info.value.error_code == code


def test_little_endian_error_frames_option(ntlm_users: NTLMUsers) -> None:
    from negotiate_stream import Connection, SecurityContext

    server = Connection(
        SecurityContext.server(credentials=ntlm_users.server_credentials(), protocol="ntlm"),
        error_byteorder="little",
    )
    server.receive_data(b"\x16\x01\x00\x00\x03abc")
    with pytest.raises(AuthenticationError):
        server.next_event()
    frame = server.data_to_send()
    assert frame[:5] == bytes.fromhex("1501000008")
    assert frame[5:] == SEC_E_INVALID_TOKEN.to_bytes(4, "little") + bytes(4)


def test_protection_level_mismatch_sends_trust_failure(ntlm_users: NTLMUsers) -> None:
    client, server = connection_pair(
        ntlm_users, client_options={"protection_level": "sign"}, server_options={"protection_level": "encrypt"}
    )
    exchange(client, server)
    exchange(server, client)
    server.receive_data(client.data_to_send())
    with pytest.raises(ProtectionLevelError):
        server.next_event()
    frame = server.data_to_send()
    assert frame == bytes.fromhex("1501000008") + ERROR_TRUST_FAILURE.to_bytes(8, "big")
    client.receive_data(frame)
    with pytest.raises(HandshakeError) as info:
        client.next_event()
    assert info.value.error_code == ERROR_TRUST_FAILURE


@pytest.mark.parametrize(
    "token",
    [b"hello", b"NTLMSSP\x00\x01", b"NTLMSSP\x00\x03\x00\x00\x00" + bytes(60), b"\x60\x03\x06\x01\x00", b"\xff" * 300],
)
def test_garbage_handshake_token(ntlm_users: NTLMUsers, token: bytes) -> None:
    _, server = connection_pair(ntlm_users, protocol="negotiate")
    server.receive_data(nns.encode_handshake(nns.MessageId.HANDSHAKE_IN_PROGRESS, token))
    with pytest.raises(AuthenticationError) as info:
        server.next_event()
    status = info.value.status
    assert status in (SEC_E_INVALID_TOKEN, SEC_E_LOGON_DENIED)
    frame = server.data_to_send()
    assert frame[:5] == bytes.fromhex("1501000008")
    assert nns.decode_error_code(frame[5:]) == status
    _assert_broken_everywhere(server, info.value)


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (b"\x17", FramingError),  # unknown message id, rejected on the first byte
        (b"\x16\x02\x00", FramingError),  # version 2.0
        (b"\x16\x01\x01", FramingError),  # version 1.1
        (b"\x14\x01\x00\x00\x00", FramingError),  # an empty token while authenticating
    ],
)
def test_bad_handshake_frames_rejected_early(ntlm_users: NTLMUsers, wire: bytes, error: type[Exception]) -> None:
    _, server = connection_pair(ntlm_users)
    server.receive_data(wire)
    with pytest.raises(error) as info:
        server.next_event()
    assert info.value.status == SEC_E_INVALID_TOKEN
    assert server.data_to_send() == nns.encode_error(SEC_E_INVALID_TOKEN)
    assert server.state is State.BROKEN


def test_second_token_after_complete_is_framing_error(ntlm_users: NTLMUsers) -> None:
    client, server = connection_pair(ntlm_users)
    exchange(client, server)
    exchange(server, client)  # the NTLM client is now complete, waiting for the server's HandshakeDone
    client.data_to_send()
    client.receive_data(nns.encode_handshake(nns.MessageId.HANDSHAKE_IN_PROGRESS, b"more please"))
    with pytest.raises(FramingError, match="after our context was complete"):
        client.next_event()


@pytest.mark.parametrize("cut", [0, 1, 4, 5, 20])
def test_eof_during_handshake(ntlm_users: NTLMUsers, cut: int) -> None:
    client, server = connection_pair(ntlm_users)
    first = client.data_to_send()
    server.receive_data(first[:cut])
    server.receive_data(b"")
    with pytest.raises(TruncatedStreamError, match="during the handshake") as info:
        server.next_event()
    assert info.value.status == SEC_E_INCOMPLETE_MESSAGE
    _assert_broken_everywhere(server, info.value)


def test_eof_after_server_reply_during_handshake(ntlm_users: NTLMUsers) -> None:
    client, server = connection_pair(ntlm_users)
    exchange(client, server)
    exchange(server, client)
    client.receive_data(b"")
    with pytest.raises(TruncatedStreamError):
        client.next_event()


@pytest.mark.parametrize("level", ["sign", "encrypt_and_sign"])
@pytest.mark.parametrize("missing", [1, 10, 17])
def test_eof_mid_record(ntlm_users: NTLMUsers, level: str, missing: int) -> None:
    client, server = established(ntlm_users, protection_level=level)
    wire = client.send(b"complete") + client.send(b"truncated record")
    server.receive_data(wire[:-missing])
    assert server.next_event() == Data(b"complete")
    assert server.next_event() is NEED_DATA
    server.receive_data(b"")
    with pytest.raises(TruncatedStreamError, match="middle of a MS-NNS record") as info:
        server.next_event()
    _assert_broken_everywhere(server, info.value)


def test_eof_mid_header(ntlm_users: NTLMUsers) -> None:
    client, server = established(ntlm_users)
    server.receive_data(client.send(b"abc")[:3])
    server.receive_data(b"")
    with pytest.raises(TruncatedStreamError):
        server.next_event()


@pytest.mark.parametrize("length", [0, 1, 4, 0x10001, 0x7FFFFFFF, 0xFFFFFFFF])
def test_bad_record_length_rejected_before_buffering(ntlm_users: NTLMUsers, length: int) -> None:
    _, server = established(ntlm_users)
    header = length.to_bytes(4, "little")
    server.receive_data(header[:3])
    assert server.next_event() is NEED_DATA
    server.receive_data(header[3:])
    with pytest.raises(FramingError, match=f"announces {length} bytes") as info:
        server.next_event()
    assert server.buffered <= 4
    assert server.data_to_send() == b""  # no Error frame once established
    _assert_broken_everywhere(server, info.value)


@pytest.mark.parametrize("length", [5, 0x10000])
def test_record_length_bounds_accepted_until_verified(ntlm_users: NTLMUsers, length: int) -> None:
    _, server = established(ntlm_users)
    server.receive_data(length.to_bytes(4, "little") + bytes(length - 1))
    assert server.next_event() is NEED_DATA  # a valid length: the decoder waits for the payload


def test_send_before_handshake_is_local_error(ntlm_users: NTLMUsers) -> None:
    client, server = connection_pair(ntlm_users)
    for conn in (client, server):
        with pytest.raises(LocalProtocolError, match="before the handshake"):
            conn.send(b"too early")
        assert conn.state is State.HANDSHAKING
    exchange(client, server)
    with pytest.raises(LocalProtocolError):
        server.send(b"")


def test_eof_event_on_established_stream_after_last_record(ntlm_users: NTLMUsers) -> None:
    client, server = established(ntlm_users, protection_level="sign")
    events = feed(server, client.send(b"a") + client.send(b"b"))
    server.receive_data(b"")
    events += drain(server)
    assert events == [Data(b"a"), Data(b"b"), EndOfStream()]
