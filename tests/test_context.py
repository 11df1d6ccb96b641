"""SecurityContext with real pyspnego NTLM contexts: levels, record layouts, policy checks, reprs."""

from __future__ import annotations

from typing import Any

import pytest

from negotiate_stream import (
    AuthenticationError,
    Credentials,
    IntegrityError,
    LocalProtocolError,
    ProtectionLevel,
    ProtectionLevelError,
    SecurityContext,
    StreamSizes,
)
from negotiate_stream.errors import SEC_E_LOGON_DENIED
from negotiate_stream.testing import NTLMUsers

NTLM_AUTHENTICATE = b"NTLMSSP\x00\x03\x00\x00\x00"
PLAINTEXT = b"The quick brown fox jumps over the lazy dog"


def make_pair(
    users: NTLMUsers, *, client: dict[str, Any] | None = None, server: dict[str, Any] | None = None, **common: Any
) -> tuple[SecurityContext, SecurityContext]:
    options: dict[str, Any] = {"protocol": "ntlm", **common}
    return (
        SecurityContext.client(credentials=users.client_credentials(), **{**options, **(client or {})}),
        SecurityContext.server(credentials=users.server_credentials(), **{**options, **(server or {})}),
    )


def run_handshake(client: SecurityContext, server: SecurityContext) -> list[bytes]:
    """Step both contexts to completion; return every token the client produced (in order)."""
    produced: list[bytes] = []
    token = client.step(None)
    for _ in range(10):
        assert token is not None
        produced.append(token)
        reply = server.step(token)
        if client.complete and server.complete:
            return produced
        token = client.step(reply)
        if token is None and client.complete and server.complete:
            return produced
        if token is None:
            raise AssertionError("client produced no token while incomplete")
    raise AssertionError("handshake did not converge")


def established(users: NTLMUsers, **options: Any) -> tuple[SecurityContext, SecurityContext]:
    client, server = make_pair(users, **options)
    run_handshake(client, server)
    assert client.complete and server.complete
    return client, server


@pytest.mark.parametrize("protocol", ["ntlm", "negotiate"])
def test_ntlm_contexts_complete_with_expected_properties(ntlm_users: NTLMUsers, protocol: str) -> None:
    client, server = established(ntlm_users, protocol=protocol)
    for ctx in (client, server):
        assert ctx.negotiated_protocol == "ntlm"
        assert ctx.protection_level is ProtectionLevel.ENCRYPT_AND_SIGN
        assert ctx.is_mutually_authenticated is False
        assert ctx.shares_crypto_state is False
        assert ctx.stream_sizes(0xFC00) == StreamSizes(header=16, trailer=0, max_message=0xFC00)
    assert server.is_server and not client.is_server
    assert server.peer_identity == "NEGOTIATE-TEST\\alice"
    assert client.peer_identity == "host/localhost"


@pytest.mark.parametrize("level", ["sign", "encrypt_and_sign"])
def test_protect_unprotect_both_directions(ntlm_users: NTLMUsers, level: str) -> None:
    client, server = established(ntlm_users, protection_level=level)
    assert client.protection_level is ProtectionLevel(level)
    for i in range(3):
        message = PLAINTEXT + bytes([i])
        record = client.protect(message)
        assert type(record) is bytes
        assert len(record) == 16 + len(message)
        assert server.unprotect(record) == message
        reply = server.protect(message[::-1])
        assert client.unprotect(reply) == message[::-1]
    assert server.unprotect(client.protect(b"")) == b""


def test_ntlm_sign_only_layout_is_signature_then_plaintext(ntlm_users: NTLMUsers) -> None:
    client, server = established(ntlm_users, protection_level="sign")
    first = client.protect(PLAINTEXT)
    second = client.protect(PLAINTEXT)
    assert first[16:] == PLAINTEXT  # .NET layout: the data travels in clear after the signature
    assert first[:4] == b"\x01\x00\x00\x00"
    assert first[12:16] == (0).to_bytes(4, "little")  # sequence number of the first record (raw NTLM)
    assert second[12:16] == (1).to_bytes(4, "little")
    assert first[4:12] != second[4:12]
    assert server.unprotect(first) == PLAINTEXT
    assert server.unprotect(second) == PLAINTEXT


def test_sealed_payload_hides_plaintext(ntlm_users: NTLMUsers) -> None:
    client, server = established(ntlm_users, protection_level="encrypt_and_sign")
    message = b"secret-" * 20
    record = client.protect(message)
    assert b"secret" not in record
    assert record[16:] != message
    assert record[:4] == b"\x01\x00\x00\x00"
    assert server.unprotect(record) == message


def test_none_level_has_no_record_protection(ntlm_users: NTLMUsers) -> None:
    client, server = established(ntlm_users, protection_level="none")
    assert client.protection_level is ProtectionLevel.NONE
    assert server.protection_level is ProtectionLevel.NONE
    assert client.stream_sizes(100) == StreamSizes(0, 0, 100)
    with pytest.raises(LocalProtocolError, match="'none'"):
        client.protect(b"x")
    with pytest.raises(LocalProtocolError, match="'none'"):
        server.unprotect(b"x" * 20)


@pytest.mark.parametrize("level", ["sign", "encrypt_and_sign"])
@pytest.mark.parametrize("position", [4, 8, 15, 16, -1])
def test_tampered_record_raises_integrity_error(ntlm_users: NTLMUsers, level: str, position: int) -> None:
    # (pyspnego may accept the *next* valid record after a failure; the Connection, not the context, breaks the
    # stream: see test_connection_errors.py.)
    client, server = established(ntlm_users, protection_level=level)
    record = bytearray(client.protect(PLAINTEXT))
    record[position] ^= 0x01
    with pytest.raises(IntegrityError, match="integrity check") as info:
        server.unprotect(bytes(record))
    assert info.value.status == 0x8009030F


def test_short_records_raise_integrity_error(ntlm_users: NTLMUsers) -> None:
    for level in ("sign", "encrypt_and_sign"):
        for size in (0, 1, 15):
            _, server = established(ntlm_users, protection_level=level)
            with pytest.raises(IntegrityError):
                server.unprotect(b"\x01" * size)


def test_before_completion_nothing_is_protected(ntlm_users: NTLMUsers) -> None:
    client, server = make_pair(ntlm_users)
    with pytest.raises(LocalProtocolError, match="not established"):
        client.protect(b"x")
    with pytest.raises(LocalProtocolError, match="not established"):
        server.unprotect(b"x" * 20)
    with pytest.raises(LocalProtocolError):
        _ = client.protection_level
    with pytest.raises(LocalProtocolError):
        client.wrap_message(b"x")
    assert client.complete is False
    assert server.peer_identity is None


def test_server_requiring_seal_rejects_sign_only_client(ntlm_users: NTLMUsers) -> None:
    client, server = make_pair(
        ntlm_users, client={"protection_level": "sign"}, server={"protection_level": "encrypt_and_sign"}
    )
    with pytest.raises(ProtectionLevelError, match="'sign' but 'encrypt_and_sign' is required") as info:
        run_handshake(client, server)
    assert info.value.status == 0x000006FE  # ERROR_TRUST_FAILURE, what .NET sends for a level mismatch


def test_server_level_is_a_minimum(ntlm_users: NTLMUsers) -> None:
    client, server = established(
        ntlm_users, client={"protection_level": "encrypt_and_sign"}, server={"protection_level": "none"}
    )
    assert server.protection_level is ProtectionLevel.ENCRYPT_AND_SIGN
    assert client.protection_level is ProtectionLevel.ENCRYPT_AND_SIGN
    record = client.protect(PLAINTEXT)
    assert PLAINTEXT not in record
    assert server.unprotect(record) == PLAINTEXT


def test_client_requiring_seal_against_server_minimum_sign_gets_seal(ntlm_users: NTLMUsers) -> None:
    _client, server = established(
        ntlm_users, client={"protection_level": "encrypt_and_sign"}, server={"protection_level": "sign"}
    )
    assert server.protection_level is ProtectionLevel.ENCRYPT_AND_SIGN


def test_require_mutual_auth_with_ntlm_fails(ntlm_users: NTLMUsers) -> None:
    client, server = make_pair(ntlm_users, client={"require_mutual_auth": True})
    with pytest.raises(AuthenticationError, match="mutual authentication") as info:
        run_handshake(client, server)
    assert info.value.status == SEC_E_LOGON_DENIED
    assert not server.complete


def test_ntlm_fallback_refused_before_authenticate_is_produced(ntlm_users: NTLMUsers) -> None:
    client = SecurityContext.client(
        credentials=ntlm_users.client_credentials(), protocol="negotiate", allow_ntlm_fallback=False
    )
    server = SecurityContext.server(credentials=ntlm_users.server_credentials(), protocol="negotiate")
    returned: list[bytes] = []
    with pytest.raises(AuthenticationError, match="NTLM fallback is disabled") as info:
        token = client.step(None)
        while token is not None:
            returned.append(token)
            token = client.step(server.step(token))
    assert info.value.status == SEC_E_LOGON_DENIED
    assert not any(NTLM_AUTHENTICATE in token for token in returned)
    assert not server.complete


def test_context_repr_hides_password() -> None:
    password = "Sup3r-Secret-Passw0rd"
    with NTLMUsers({"bob": password}) as users:
        client = SecurityContext.client(credentials=users.client_credentials(), protocol="ntlm")
        server = SecurityContext.server(credentials=users.server_credentials(), protocol="ntlm")
        for ctx in (client, server):
            assert password not in repr(ctx)
            assert password not in str(ctx)
        assert repr(client).startswith("<SecurityContext client protocol=ntlm target='host/localhost' handshaking")
        run_handshake(client, server)
        assert "complete" in repr(server)
        assert password not in repr(client)


def test_credentials_repr_hides_password() -> None:
    creds = Credentials(username="bob", password="Sup3r-Secret-Passw0rd", domain="CORP")
    assert "Sup3r-Secret-Passw0rd" not in repr(creds)
    assert "Sup3r-Secret-Passw0rd" not in str(creds)
    assert "username='bob'" in repr(creds)
    assert creds.principal == "CORP\\bob"
    assert Credentials(username="bob@REALM", domain="CORP").principal == "bob@REALM"
    assert Credentials().principal is None


def test_shares_crypto_state_false_by_default(ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LM_COMPAT_LEVEL", raising=False)
    client, server = established(ntlm_users)
    assert client.shares_crypto_state is False
    assert server.shares_crypto_state is False


def test_shares_crypto_state_true_without_ess(ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LM_COMPAT_LEVEL", "0")
    client, server = established(ntlm_users)
    assert client.shares_crypto_state is True
    assert server.shares_crypto_state is True
    # One keystream for both directions: strictly alternating request/response still works.
    for i in range(3):
        assert server.unprotect(client.protect(b"ping %d" % i)) == b"ping %d" % i
        assert client.unprotect(server.protect(b"pong %d" % i)) == b"pong %d" % i


def test_wrap_message_round_trip(ntlm_users: NTLMUsers) -> None:
    client, server = established(ntlm_users)
    token = server.wrap_message(b"\x06\xff\xff\xff")
    assert client.unwrap_message(token) == b"\x06\xff\xff\xff"
    bad = bytearray(server.wrap_message(b"\x02\x00\x10\x00"))
    bad[-1] ^= 0x80
    with pytest.raises(IntegrityError):
        client.unwrap_message(bytes(bad))


def test_select_protection_level_bounds(ntlm_users: NTLMUsers) -> None:
    client, _server = established(ntlm_users, protection_level="sign")
    with pytest.raises(ProtectionLevelError):
        client.select_protection_level("encrypt_and_sign")
    with pytest.raises(ProtectionLevelError):
        client.select_protection_level("none")  # below the required 'sign'
    client.select_protection_level("sign")
    assert client.protection_level is ProtectionLevel.SIGN


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("none", ProtectionLevel.NONE),
        ("Sign", ProtectionLevel.SIGN),
        ("encrypt", ProtectionLevel.ENCRYPT_AND_SIGN),
        ("EncryptAndSign", ProtectionLevel.ENCRYPT_AND_SIGN),
        ("encrypt-and-sign", ProtectionLevel.ENCRYPT_AND_SIGN),
        ("seal", ProtectionLevel.ENCRYPT_AND_SIGN),
    ],
)
def test_protection_level_parse(text: str, level: ProtectionLevel) -> None:
    assert ProtectionLevel.parse(text) is level


def test_bad_options_rejected() -> None:
    with pytest.raises(ValueError, match="unknown protection level"):
        ProtectionLevel.parse("paranoid")
    with pytest.raises(ValueError, match="unknown protocol"):
        SecurityContext.client(protocol="basic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="service principal name"):
        SecurityContext.client(target="/host", protocol="ntlm")
