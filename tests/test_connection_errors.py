"""Connection failure paths in memory: rejected handshakes, Error frames, framing limits, EOF, broken/closed state."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from negotiate_stream import (
    NEED_DATA,
    AuthenticationError,
    BrokenStreamError,
    Connection,
    Data,
    EndOfStream,
    Event,
    FramingError,
    HandshakeComplete,
    HandshakeError,
    IntegrityError,
    LocalProtocolError,
    ProtectionLevelError,
    SecurityContext,
    State,
    StreamClosedError,
    TruncatedStreamError,
)
from negotiate_stream._framing import nns
from negotiate_stream.errors import (
    SEC_E_INCOMPLETE_MESSAGE,
    SEC_E_INTERNAL_ERROR,
    SEC_E_INVALID_TOKEN,
    SEC_E_LOGON_DENIED,
)
from negotiate_stream.testing import NTLMUsers, connection_pair, handshake

ERROR_TRUST_FAILURE = 0x000006FE
NTLM_AUTHENTICATE = b"NTLMSSP\x00\x03\x00\x00\x00"


def drain(conn: Connection) -> list[Event]:
    events: list[Event] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        assert isinstance(event, HandshakeComplete | Data | EndOfStream)
        events.append(event)
        if isinstance(event, EndOfStream):
            return events


def established(users: NTLMUsers, **options: Any) -> tuple[Connection, Connection]:
    client, server = connection_pair(users, **options)
    handshake(client, server)
    return client, server


def assert_broken_everywhere(conn: Connection, cause: BaseException) -> None:
    """Every later call raises BrokenStreamError chained to ``cause`` (and keeps doing so)."""
    assert conn.state is State.BROKEN
    assert conn.broken_cause is cause
    for _ in range(2):
        for call in (
            conn.next_event,
            lambda: conn.receive_data(b"x"),
            lambda: conn.receive_data(b""),
            lambda: conn.send(b"x"),
        ):
            with pytest.raises(BrokenStreamError, match="broken by an earlier error") as info:
                call()
            assert info.value.__cause__ is cause
    conn.close()  # closing a broken connection keeps it broken
    assert conn.state is State.BROKEN


# -- rejected handshakes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("byteorder", ["big", "little"])
def test_wrong_password(ntlm_users: NTLMUsers, byteorder: str) -> None:
    client = Connection(
        SecurityContext.client(credentials=ntlm_users.client_credentials(password="wrong password"), protocol="ntlm")
    )
    server = Connection(
        SecurityContext.server(credentials=ntlm_users.server_credentials(), protocol="ntlm"),
        error_byteorder=byteorder,  # type: ignore[arg-type]
    )
    server.receive_data(client.data_to_send())
    assert drain(server) == []
    client.receive_data(server.data_to_send())
    assert drain(client) == []
    authenticate = client.data_to_send()
    assert NTLM_AUTHENTICATE in authenticate
    server.receive_data(authenticate)
    with pytest.raises(AuthenticationError) as info:
        server.next_event()
    assert type(info.value) is AuthenticationError
    assert info.value.status == SEC_E_LOGON_DENIED
    assert "check user name, domain and password" in str(info.value)
    error_frame = server.data_to_send()
    assert error_frame == b"\x15\x01\x00\x00\x08" + SEC_E_LOGON_DENIED.to_bytes(8, byteorder)  # type: ignore[arg-type]
    assert server.data_to_send() == b""
    assert server.info is None
    assert_broken_everywhere(server, info.value)

    client.receive_data(error_frame)
    with pytest.raises(HandshakeError) as client_info:
        client.next_event()
    assert client_info.value.error_code == SEC_E_LOGON_DENIED
    assert client_info.value.status == SEC_E_LOGON_DENIED
    assert "SEC_E_LOGON_DENIED" in str(client_info.value)
    assert client.data_to_send() == b""  # never answer an Error frame with another one
    assert_broken_everywhere(client, client_info.value)


def test_unknown_user(ntlm_users: NTLMUsers) -> None:
    client = Connection(
        SecurityContext.client(
            credentials=ntlm_users.client_credentials().__class__(username="mallory", password="x", domain="EVIL"),
            protocol="ntlm",
        )
    )
    server = Connection(SecurityContext.server(credentials=ntlm_users.server_credentials(), protocol="ntlm"))
    with pytest.raises(AuthenticationError) as info:
        handshake(client, server)
    assert info.value.status == SEC_E_LOGON_DENIED
    assert server.state is State.BROKEN
    assert server.data_to_send()[:5] == b"\x15\x01\x00\x00\x08"


def test_protection_level_mismatch_sends_trust_failure(ntlm_users: NTLMUsers) -> None:
    client, server = connection_pair(
        ntlm_users, client_options={"protection_level": "sign"}, server_options={"protection_level": "encrypt_and_sign"}
    )
    with pytest.raises(ProtectionLevelError) as info:
        handshake(client, server)
    assert info.value.status == ERROR_TRUST_FAILURE
    frame = server.data_to_send()
    assert frame == bytes.fromhex("1501000008 00000000 000006fe")
    client.receive_data(frame)
    with pytest.raises(HandshakeError) as client_info:
        client.next_event()
    assert client_info.value.error_code == ERROR_TRUST_FAILURE
    assert client.state is State.BROKEN


def test_require_mutual_auth_fails_on_the_client_before_authenticate_is_sent(ntlm_users: NTLMUsers) -> None:
    client, server = connection_pair(ntlm_users, client_options={"require_mutual_auth": True})
    server.receive_data(client.data_to_send())
    drain(server)
    client.receive_data(server.data_to_send())
    with pytest.raises(AuthenticationError, match="mutual authentication") as info:
        client.next_event()
    out = client.data_to_send()
    assert NTLM_AUTHENTICATE not in out
    assert out == b"\x15\x01\x00\x00\x08" + SEC_E_LOGON_DENIED.to_bytes(8, "big")
    assert_broken_everywhere(client, info.value)
    server.receive_data(out)
    with pytest.raises(HandshakeError) as server_info:
        server.next_event()
    assert server_info.value.error_code == SEC_E_LOGON_DENIED
    assert server.data_to_send() == b""


def test_ntlm_fallback_refused_by_connection(ntlm_users: NTLMUsers) -> None:
    with pytest.raises(AuthenticationError, match="NTLM fallback is disabled"):
        connection_pair(ntlm_users, protocol="negotiate", client_options={"allow_ntlm_fallback": False})


@pytest.mark.parametrize(
    "garbage",
    [b"\x00", b"\x17\x01\x00\x00\x00", b"\x16\x02\x00\x00\x01x", b"\x16\x01\x01"],
    ids=["id-0x00", "id-0x17", "version-2.0", "version-1.1"],
)
def test_garbage_during_handshake(ntlm_users: NTLMUsers, garbage: bytes) -> None:
    _, server = connection_pair(ntlm_users)
    server.receive_data(garbage)
    with pytest.raises(FramingError) as info:
        server.next_event()
    assert server.data_to_send() == b"\x15\x01\x00\x00\x08" + SEC_E_INVALID_TOKEN.to_bytes(8, "big")
    assert_broken_everywhere(server, info.value)


def test_garbage_token_during_handshake(ntlm_users: NTLMUsers) -> None:
    _, server = connection_pair(ntlm_users)
    server.receive_data(nns.encode_handshake(nns.MessageId.HANDSHAKE_IN_PROGRESS, b"not an NTLM message"))
    with pytest.raises(AuthenticationError) as info:
        server.next_event()
    assert server.data_to_send()[:5] == b"\x15\x01\x00\x00\x08"
    assert_broken_everywhere(server, info.value)


def test_empty_token_while_authenticating(ntlm_users: NTLMUsers) -> None:
    _, server = connection_pair(ntlm_users)
    server.receive_data(nns.encode_handshake(nns.MessageId.HANDSHAKE_IN_PROGRESS, b""))
    with pytest.raises(FramingError, match="empty handshake token"):
        server.next_event()


def test_token_after_context_complete(ntlm_users: NTLMUsers) -> None:
    client, server = connection_pair(ntlm_users)
    server.receive_data(client.data_to_send())
    drain(server)
    client.receive_data(server.data_to_send())
    drain(client)  # the client is complete, waiting for the server's HandshakeDone
    client.receive_data(nns.encode_handshake(nns.MessageId.HANDSHAKE_IN_PROGRESS, b"more"))
    with pytest.raises(FramingError, match="after our context was complete"):
        client.next_event()
    assert client.state is State.BROKEN


def test_record_before_handshake_done(ntlm_users: NTLMUsers) -> None:
    _, server = connection_pair(ntlm_users)
    server.receive_data((20).to_bytes(4, "little") + b"\x01" * 20)
    with pytest.raises(FramingError):
        server.next_event()
    assert server.state is State.BROKEN


def test_peer_error_frame_with_unknown_code(ntlm_users: NTLMUsers) -> None:
    client, _ = connection_pair(ntlm_users)
    client.receive_data(nns.encode_error(0x12345678, byteorder="little"))
    with pytest.raises(HandshakeError) as info:
        client.next_event()
    assert info.value.error_code == 0x12345678
    assert "0x12345678" in str(info.value)


def test_oversize_outgoing_handshake_token_is_a_typed_error(ntlm_users: NTLMUsers) -> None:
    """Regression: a ValueError from encode_handshake escaped next_event(), leaving the stream HANDSHAKING."""
    client, server = connection_pair(ntlm_users)
    server.receive_data(client.data_to_send())
    drain(server)
    frame, _ = nns.parse_handshake(server.data_to_send())  # type: ignore[misc]
    challenge = frame.payload
    # Rebuild the CHALLENGE with ~64 KiB of extra AV pairs in its target info; the client copies the target info
    # into its NTLMv2 response, so its AUTHENTICATE message no longer fits an MS-NNS handshake message.
    name_len, _, name_offset = struct.unpack_from("<HHI", challenge, 12)
    info_len, _, info_offset = struct.unpack_from("<HHI", challenge, 40)
    target_name = challenge[name_offset : name_offset + name_len]
    target_info = challenge[info_offset : info_offset + info_len]
    assert target_info[-4:] == b"\x00\x00\x00\x00"  # MsvAvEOL

    def av_pair(av_id: int, value: bytes) -> bytes:
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
    assert client.data_to_send() == b"\x15\x01\x00\x00\x08" + SEC_E_INTERNAL_ERROR.to_bytes(8, "big")
    assert_broken_everywhere(client, info.value)


# -- framing limits ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 4, 0x10001, 0xFFFFFFFF], ids=lambda n: f"len={n:#x}")
def test_bad_record_length_rejected_from_header(ntlm_users: NTLMUsers, length: int) -> None:
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
    client, server = established(ntlm_users)
    server.receive_data(client.send(b"ok") + length.to_bytes(4, "little") + b"\x00" * 64)
    assert server.next_event() == Data(b"ok")
    with pytest.raises(FramingError):
        server.next_event()
    assert server.state is State.BROKEN


# -- EOF ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [1, 3, 4, 5, 20, -1])
def test_eof_mid_record(ntlm_users: NTLMUsers, keep: int) -> None:
    client, server = established(ntlm_users)
    wire = client.send(b"complete") + client.send(b"truncated record")
    first_len = len(wire) // 2
    server.receive_data(wire[: first_len + keep] if keep > 0 else wire[:keep])
    server.receive_data(b"")
    assert server.next_event() == Data(b"complete")
    with pytest.raises(TruncatedStreamError, match="middle of a MS-NNS record") as info:
        server.next_event()
    assert info.value.status == SEC_E_INCOMPLETE_MESSAGE
    assert_broken_everywhere(server, info.value)


@pytest.mark.parametrize("keep", [0, 1, 4, 5, 10])
def test_eof_during_handshake(ntlm_users: NTLMUsers, keep: int) -> None:
    client, server = connection_pair(ntlm_users)
    server.receive_data(client.data_to_send()[:keep])
    server.receive_data(b"")
    with pytest.raises(TruncatedStreamError, match="during the handshake") as info:
        server.next_event()
    assert server.info is None
    assert_broken_everywhere(server, info.value)


def test_eof_on_client_after_its_final_message(ntlm_users: NTLMUsers) -> None:
    client, server = connection_pair(ntlm_users)
    server.receive_data(client.data_to_send())
    drain(server)
    client.receive_data(server.data_to_send())
    drain(client)
    client.receive_data(b"")  # the server hung up instead of sending HandshakeDone
    with pytest.raises(TruncatedStreamError):
        client.next_event()
    assert client.info is None


# -- API misuse ---------------------------------------------------------------------------------------------------


def test_send_before_handshake(ntlm_users: NTLMUsers) -> None:
    client, server = connection_pair(ntlm_users)
    for conn in (client, server):
        with pytest.raises(LocalProtocolError, match="before the handshake completes"):
            conn.send(b"too early")
        assert conn.state is State.HANDSHAKING  # a caller's mistake does not break the stream
    handshake(client, server)
    assert client.state is State.ESTABLISHED


def test_after_close(ntlm_users: NTLMUsers) -> None:
    client, _server = established(ntlm_users)
    client.close()
    for call in (lambda: client.send(b"x"), lambda: client.receive_data(b"x"), client.next_event):
        with pytest.raises(StreamClosedError, match="closed by this side"):
            call()
    with pytest.raises(StreamClosedError):
        client.send(b"")


def test_close_during_handshake(ntlm_users: NTLMUsers) -> None:
    client, _ = connection_pair(ntlm_users)
    client.close()
    with pytest.raises(StreamClosedError):
        client.next_event()


def test_broken_keeps_first_cause(ntlm_users: NTLMUsers) -> None:
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
    client, _ = established(ntlm_users)
    cause = ConnectionResetError("write interrupted mid-record")
    client.mark_broken(cause)
    assert_broken_everywhere(client, cause)


def test_server_refusing_ntlm_fallback(ntlm_users: NTLMUsers) -> None:
    client, server = connection_pair(ntlm_users, protocol="negotiate", server_options={"allow_ntlm_fallback": False})
    server.receive_data(client.data_to_send())
    with pytest.raises(AuthenticationError, match="NTLM fallback is disabled") as info:
        server.next_event()
    frame = server.data_to_send()
    assert frame == b"\x15\x01\x00\x00\x08" + SEC_E_LOGON_DENIED.to_bytes(8, "big")
    assert b"NTLMSSP" not in frame  # no CHALLENGE went out
    assert_broken_everywhere(server, info.value)
    client.receive_data(frame)
    with pytest.raises(HandshakeError):
        client.next_event()


@pytest.mark.parametrize(
    "make",
    [
        lambda: AuthenticationError("denied", status=ERROR_TRUST_FAILURE),
        lambda: IntegrityError("altered"),
    ],
    ids=["AuthenticationError", "IntegrityError"],
)
def test_errors_survive_copy_and_pickle(make: Any) -> None:
    import copy
    import pickle

    original = make()
    for clone in (copy.copy(original), pickle.loads(pickle.dumps(original))):
        assert type(clone) is type(original)
        assert clone.status == original.status
        assert str(clone) == str(original)


def test_handshake_error_copy_and_pickle() -> None:
    import copy
    import pickle

    original = HandshakeError(SEC_E_LOGON_DENIED)
    for clone in (copy.copy(original), pickle.loads(pickle.dumps(original))):
        assert type(clone) is HandshakeError
        assert clone.error_code == SEC_E_LOGON_DENIED
        assert str(clone) == str(original)
