"""SecurityContext over real pyspnego NTLM: protection levels, record layouts, policy failures, reprs."""

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
)
from negotiate_stream.errors import ERROR_TRUST_FAILURE, SEC_E_LOGON_DENIED
from negotiate_stream.testing import NTLMUsers

NTLM_AUTHENTICATE = b"NTLMSSP\x00\x03\x00\x00\x00"
PLAINTEXT = b"attack at dawn, " * 8


def make_pair(
    users: NTLMUsers,
    client_options: dict[str, Any] | None = None,
    server_options: dict[str, Any] | None = None,
    **options: Any,
) -> tuple[SecurityContext, SecurityContext]:
    common: dict[str, Any] = {"protocol": "ntlm", **options}
    client = SecurityContext.client(credentials=users.client_credentials(), **{**common, **(client_options or {})})
    server = SecurityContext.server(credentials=users.server_credentials(), **{**common, **(server_options or {})})
    return client, server


def run_handshake(client: SecurityContext, server: SecurityContext) -> list[bytes]:
    """Step both contexts to completion; return every token the client produced."""
    client_tokens: list[bytes] = []
    token = client.step(None)
    for _ in range(8):
        if token is not None:
            client_tokens.append(token)
            token = server.step(token)
        if token is not None:
            token = client.step(token)
        if client.complete and server.complete and token is None:
            return client_tokens
    raise AssertionError("handshake did not converge")


@pytest.mark.parametrize("protocol", ["ntlm", "negotiate"])
@pytest.mark.parametrize("level", list(ProtectionLevel))
def test_protect_unprotect_all_levels(ntlm_users: NTLMUsers, protocol: str, level: ProtectionLevel) -> None:
    client, server = make_pair(ntlm_users, protocol=protocol, protection_level=level)
    run_handshake(client, server)
    assert client.protection_level is level and server.protection_level is level
    assert client.negotiated_protocol == server.negotiated_protocol == "ntlm"
    if level is ProtectionLevel.NONE:
        with pytest.raises(LocalProtocolError, match="none"):
            client.protect(PLAINTEXT)
        with pytest.raises(LocalProtocolError, match="none"):
            server.unprotect(PLAINTEXT)
        return
    for sender, receiver in ((client, server), (server, client)):
        for message in (PLAINTEXT, b"x", b"second" * 1000):
            payload = sender.protect(message)
            assert type(payload) is bytes and len(payload) == 16 + len(message)
            assert payload[:4] == b"\x01\x00\x00\x00"
            plaintext = receiver.unprotect(payload)
            assert type(plaintext) is bytes and plaintext == message


def test_sign_only_is_signature_plus_plaintext(ntlm_users: NTLMUsers) -> None:
    client, server = make_pair(ntlm_users, protection_level="sign")
    run_handshake(client, server)
    first = client.protect(PLAINTEXT)
    second = client.protect(b"more")
    # Windows layout: 16-byte signature (version 1, checksum, LE sequence number), then the plaintext in clear.
    assert first[16:] == PLAINTEXT and second[16:] == b"more"
    assert first[:4] == second[:4] == b"\x01\x00\x00\x00"
    assert int.from_bytes(second[12:16], "little") == int.from_bytes(first[12:16], "little") + 1
    assert server.unprotect(first) == PLAINTEXT
    assert server.unprotect(second) == b"more"


def test_sign_only_sealed_with_ntlm_seal_sign_only(ntlm_users: NTLMUsers) -> None:
    client, server = make_pair(ntlm_users, protection_level="sign", ntlm_seal_sign_only=True)
    run_handshake(client, server)
    assert client.protection_level is ProtectionLevel.SIGN
    payload = client.protect(PLAINTEXT)
    assert len(payload) == 16 + len(PLAINTEXT)
    assert PLAINTEXT not in payload and b"attack" not in payload
    assert server.unprotect(payload) == PLAINTEXT
    reply = server.protect(b"ok")
    assert reply[16:] != b"ok"
    assert client.unprotect(reply) == b"ok"


def test_sealed_payload_does_not_contain_plaintext(ntlm_users: NTLMUsers) -> None:
    client, server = make_pair(ntlm_users, protection_level="encrypt_and_sign")
    run_handshake(client, server)
    payload = client.protect(PLAINTEXT)
    assert b"attack" not in payload and b"dawn" not in payload
    assert server.unprotect(payload) == PLAINTEXT


def test_unprotect_tampered_payload_raises_integrity_error(ntlm_users: NTLMUsers) -> None:
    client, server = make_pair(ntlm_users)
    run_handshake(client, server)
    payload = bytearray(client.protect(PLAINTEXT))
    payload[20] ^= 0x01
    with pytest.raises(IntegrityError):
        server.unprotect(bytes(payload))


def test_signed_record_shorter_than_signature(ntlm_users: NTLMUsers) -> None:
    client, server = make_pair(ntlm_users, protection_level="sign")
    run_handshake(client, server)
    with pytest.raises(IntegrityError, match="16-byte"):
        server.unprotect(b"\x01\x00\x00\x00short")


def test_protect_before_handshake_is_local_error(ntlm_users: NTLMUsers) -> None:
    client, _ = make_pair(ntlm_users)
    with pytest.raises(LocalProtocolError):
        client.protect(b"early")
    with pytest.raises(LocalProtocolError):
        _ = client.protection_level
    with pytest.raises(LocalProtocolError):
        client.wrap_message(b"early")


def test_server_requiring_seal_refuses_sign_only_client(ntlm_users: NTLMUsers) -> None:
    client, server = make_pair(
        ntlm_users, client_options={"protection_level": "sign"}, server_options={"protection_level": "encrypt"}
    )
    token = client.step(None)
    assert token is not None
    challenge = server.step(token)
    assert challenge is not None
    authenticate = client.step(challenge)
    assert authenticate is not None and authenticate.startswith(NTLM_AUTHENTICATE)
    assert client.protection_level is ProtectionLevel.SIGN
    with pytest.raises(ProtectionLevelError, match=r"'sign'.*'encrypt_and_sign'") as info:
        server.step(authenticate)
    assert info.value.status == ERROR_TRUST_FAILURE


def test_server_none_accepts_sealing_client(ntlm_users: NTLMUsers) -> None:
    client, server = make_pair(
        ntlm_users, client_options={"protection_level": "encrypt_and_sign"}, server_options={"protection_level": "none"}
    )
    run_handshake(client, server)
    assert client.protection_level is server.protection_level is ProtectionLevel.ENCRYPT_AND_SIGN
    payload = client.protect(PLAINTEXT)
    assert b"attack" not in payload
    assert server.unprotect(payload) == PLAINTEXT


def test_require_mutual_auth_with_ntlm_fails(ntlm_users: NTLMUsers) -> None:
    client, server = make_pair(ntlm_users, client_options={"require_mutual_auth": True})
    challenge = server.step(client.step(None))
    with pytest.raises(AuthenticationError, match="mutual") as info:
        client.step(challenge)
    assert type(info.value) is AuthenticationError
    assert info.value.status == SEC_E_LOGON_DENIED


def test_no_ntlm_fallback_fails_before_authenticate(ntlm_users: NTLMUsers) -> None:
    client, server = make_pair(ntlm_users, protocol="negotiate", client_options={"allow_ntlm_fallback": False})
    produced: list[bytes] = []
    with pytest.raises(AuthenticationError, match="allow_ntlm_fallback") as info:
        token = client.step(None)
        while token is not None:  # pragma: no cover - only runs if the first step does not refuse
            produced.append(token)
            reply = server.step(token)
            assert reply is not None
            token = client.step(reply)
    assert info.value.status == SEC_E_LOGON_DENIED
    assert not any(NTLM_AUTHENTICATE in token for token in produced)


def test_session_properties(ntlm_users: NTLMUsers) -> None:
    client, server = make_pair(ntlm_users, target="HTTP/web.example.com")
    assert client.negotiated_protocol in (None, "ntlm")
    assert client.peer_identity is None
    run_handshake(client, server)
    assert server.peer_identity == "NEGOTIATE-TEST\\alice"
    assert client.peer_identity == "HTTP/web.example.com"
    assert not client.is_mutually_authenticated and not server.is_mutually_authenticated
    sizes = client.stream_sizes(0xFC00)
    assert (sizes.header, sizes.trailer, sizes.max_message) == (16, 0, 0xFC00)


def test_select_protection_level_bounds(ntlm_users: NTLMUsers) -> None:
    client, server = make_pair(ntlm_users, protection_level="sign")
    run_handshake(client, server)
    with pytest.raises(ProtectionLevelError):
        client.select_protection_level("encrypt_and_sign")
    with pytest.raises(ProtectionLevelError):
        client.select_protection_level("none")


def test_wrap_message_round_trip(ntlm_users: NTLMUsers) -> None:
    client, server = make_pair(ntlm_users)
    run_handshake(client, server)
    token = server.wrap_message(b"\x06\xff\xff\xff")
    assert client.unwrap_message(token) == b"\x06\xff\xff\xff"
    with pytest.raises(IntegrityError):
        client.unwrap_message(token)  # replayed


def test_unknown_protocol_and_level_rejected() -> None:
    with pytest.raises(ValueError, match="protocol"):
        SecurityContext.client(protocol="digest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="protection level"):
        SecurityContext.client(protection_level="paranoid")


@pytest.mark.parametrize(
    ("name", "level"),
    [
        ("Sign", ProtectionLevel.SIGN),
        ("EncryptAndSign", ProtectionLevel.ENCRYPT_AND_SIGN),
        ("none", ProtectionLevel.NONE),
    ],
)
def test_protection_level_parse(name: str, level: ProtectionLevel) -> None:
    assert ProtectionLevel.parse(name) is level


def test_reprs_hide_password(ntlm_users: NTLMUsers) -> None:
    password = ntlm_users.password("alice")
    credentials = ntlm_users.client_credentials()
    assert credentials.password == password
    assert password not in repr(credentials) and password not in str(credentials)
    assert "alice" in repr(credentials)
    client, server = make_pair(ntlm_users)
    run_handshake(client, server)
    for obj in (client, server):
        assert password not in repr(obj)
    assert repr(client).startswith("<SecurityContext client protocol=ntlm")
    assert repr(Credentials(username="bob", password="hunter2")).count("hunter2") == 0


def test_shares_crypto_state_false_by_default(ntlm_users: NTLMUsers) -> None:
    client, server = make_pair(ntlm_users)
    run_handshake(client, server)
    assert client.shares_crypto_state is False
    assert server.shares_crypto_state is False


@pytest.mark.parametrize(
    "protocol",
    [
        "ntlm",
        "negotiate",
    ],
)
def test_shares_crypto_state_without_ess(ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch, protocol: str) -> None:
    # NTLMv1 without Extended Session Security: one RC4 state and one sequence counter for both directions.
    monkeypatch.setenv("LM_COMPAT_LEVEL", "0")
    client, server = make_pair(ntlm_users, protocol=protocol)
    run_handshake(client, server)
    assert client.shares_crypto_state is True
    assert server.shares_crypto_state is True
    # Interleaved traffic still verifies as long as the calls are serialised.
    assert server.unprotect(client.protect(b"one")) == b"one"
    assert client.unprotect(server.protect(b"two")) == b"two"
    assert server.unprotect(client.protect(b"three")) == b"three"
