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
    StreamSizes,
)
from negotiate_stream.errors import ERROR_TRUST_FAILURE, SEC_E_LOGON_DENIED
from negotiate_stream.testing import NTLMUsers
from tests.support.core import context_handshake, context_pair

NTLM_AUTHENTICATE = b"NTLMSSP\x00\x03\x00\x00\x00"
PLAINTEXT = b"attack at dawn, " * 8
SEC_E_MESSAGE_ALTERED = 0x8009030F


def established(users: NTLMUsers, **options: Any) -> tuple[SecurityContext, SecurityContext]:
    """A client and server context after a completed handshake (options as for ``context_pair``)."""
    client, server = context_pair(users, **options)
    context_handshake(client, server)
    assert client.complete and server.complete
    return client, server


@pytest.mark.parametrize("protocol", ["ntlm", "negotiate"])
def test_contexts_complete_with_expected_properties(ntlm_users: NTLMUsers, protocol: str) -> None:
    """A default NTLM session is sealed, not mutual, per-direction keys, 16-byte header, known identities."""
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


@pytest.mark.parametrize("protocol", ["ntlm", "negotiate"])
@pytest.mark.parametrize("level", list(ProtectionLevel))
def test_protect_unprotect_all_levels(ntlm_users: NTLMUsers, protocol: str, level: ProtectionLevel) -> None:
    """Records round-trip both ways (16-byte signature + data) when signed or sealed; level none has no records."""
    client, server = established(ntlm_users, protocol=protocol, protection_level=level)
    assert client.protection_level is level and server.protection_level is level
    assert client.negotiated_protocol == server.negotiated_protocol == "ntlm"
    if level is ProtectionLevel.NONE:
        assert client.stream_sizes(100) == StreamSizes(0, 0, 100)
        with pytest.raises(LocalProtocolError, match="'none'"):
            client.protect(PLAINTEXT)
        with pytest.raises(LocalProtocolError, match="'none'"):
            server.unprotect(PLAINTEXT)
        return
    for sender, receiver in ((client, server), (server, client)):
        for message in (PLAINTEXT, b"x", b"second" * 1000, b""):
            payload = sender.protect(message)
            assert type(payload) is bytes and len(payload) == 16 + len(message)
            assert payload[:4] == b"\x01\x00\x00\x00"
            plaintext = receiver.unprotect(payload)
            assert type(plaintext) is bytes and plaintext == message
    # Requests and replies interleaved, as a protocol exchanges them.
    for i in range(3):
        message = PLAINTEXT + bytes([i])
        assert server.unprotect(client.protect(message)) == message
        assert client.unprotect(server.protect(message[::-1])) == message[::-1]


def test_ntlm_sign_only_layout_is_signature_then_plaintext(ntlm_users: NTLMUsers) -> None:
    """Sign-only NTLM is the Windows layout: version 1, checksum, LE sequence number from 0, then clear data."""
    client, server = established(ntlm_users, protection_level="sign")
    first = client.protect(PLAINTEXT)
    second = client.protect(PLAINTEXT)
    third = client.protect(b"more")
    assert first[16:] == second[16:] == PLAINTEXT and third[16:] == b"more"
    assert first[:4] == second[:4] == third[:4] == b"\x01\x00\x00\x00"
    assert first[12:16] == (0).to_bytes(4, "little")  # sequence number of the first record (raw NTLM)
    assert second[12:16] == (1).to_bytes(4, "little")
    assert third[12:16] == (2).to_bytes(4, "little")
    assert first[4:12] != second[4:12]
    assert server.unprotect(first) == PLAINTEXT
    assert server.unprotect(second) == PLAINTEXT
    assert server.unprotect(third) == b"more"


def test_sign_only_sealed_with_ntlm_seal_sign_only(ntlm_users: NTLMUsers) -> None:
    """ntlm_seal_sign_only=True keeps level SIGN but uses the sealed layout (what .NET on Linux sends)."""
    client, server = established(ntlm_users, protection_level="sign", ntlm_seal_sign_only=True)
    assert client.protection_level is ProtectionLevel.SIGN
    payload = client.protect(PLAINTEXT)
    assert len(payload) == 16 + len(PLAINTEXT)
    assert PLAINTEXT not in payload and b"attack" not in payload
    assert server.unprotect(payload) == PLAINTEXT
    reply = server.protect(b"ok")
    assert reply[16:] != b"ok"
    assert client.unprotect(reply) == b"ok"


def test_sealed_payload_hides_plaintext(ntlm_users: NTLMUsers) -> None:
    """A sealed record carries no plaintext fragment after its signature."""
    client, server = established(ntlm_users, protection_level="encrypt_and_sign")
    message = b"secret-" * 20
    record = client.protect(message)
    assert b"secret" not in record
    assert record[16:] != message
    assert record[:4] == b"\x01\x00\x00\x00"
    assert server.unprotect(record) == message
    payload = client.protect(PLAINTEXT)
    assert b"attack" not in payload and b"dawn" not in payload
    assert server.unprotect(payload) == PLAINTEXT


@pytest.mark.parametrize("level", ["sign", "encrypt_and_sign"])
@pytest.mark.parametrize("position", [4, 8, 15, 16, 20, -1])
def test_tampered_record_raises_integrity_error(ntlm_users: NTLMUsers, level: str, position: int) -> None:
    """One flipped bit in the signature or the data is an IntegrityError (SEC_E_MESSAGE_ALTERED)."""
    # The Connection breaks the stream on the first failure: see test_connection_errors.py and test_tampering.py.
    client, server = established(ntlm_users, protection_level=level)
    record = bytearray(client.protect(PLAINTEXT))
    record[position] ^= 0x01
    with pytest.raises(IntegrityError, match="integrity check") as info:
        server.unprotect(bytes(record))
    assert info.value.status == SEC_E_MESSAGE_ALTERED


@pytest.mark.parametrize("level", ["sign", "encrypt_and_sign"])
def test_refusals_after_a_rejected_record_name_the_first_failure(ntlm_users: NTLMUsers, level: str) -> None:
    """After one bad record every later one (even valid) is refused with the same message, which never nests."""
    client, server = established(ntlm_users, protection_level=level)
    record = bytearray(client.protect(PLAINTEXT))
    record[-1] ^= 0x01
    with pytest.raises(IntegrityError) as first:
        server.unprotect(bytes(record))
    messages = []
    for _ in range(3):
        with pytest.raises(IntegrityError, match="already rejected a record") as later:
            server.unprotect(client.protect(PLAINTEXT))
        assert later.value.status == SEC_E_MESSAGE_ALTERED
        messages.append(str(later.value))
    assert messages[0] == messages[1] == messages[2]
    assert str(first.value) in messages[0]
    assert messages[0].count("already rejected") == 1


@pytest.mark.parametrize("level", ["sign", "encrypt_and_sign"])
@pytest.mark.parametrize(
    "record", [b"", b"\x01", b"\x01" * 15, b"\x01\x00\x00\x00short"], ids=["0", "1", "15", "9-version-1"]
)
def test_short_records_raise_integrity_error(ntlm_users: NTLMUsers, level: str, record: bytes) -> None:
    """A record shorter than the 16-byte signature is an IntegrityError, never an IndexError."""
    _, server = established(ntlm_users, protection_level=level)
    with pytest.raises(IntegrityError, match="16-byte" if level == "sign" else None):
        server.unprotect(record)


def test_before_completion_nothing_is_protected(ntlm_users: NTLMUsers) -> None:
    """Before the handshake completes, protect/unprotect/wrap and the protection level are LocalProtocolErrors."""
    client, server = context_pair(ntlm_users)
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
    """A server requiring sealing refuses a sign-only AUTHENTICATE with ProtectionLevelError/ERROR_TRUST_FAILURE."""
    client, server = context_pair(
        ntlm_users, client_options={"protection_level": "sign"}, server_options={"protection_level": "encrypt"}
    )
    token = client.step(None)
    assert token is not None
    challenge = server.step(token)
    assert challenge is not None
    authenticate = client.step(challenge)
    assert authenticate is not None and authenticate.startswith(NTLM_AUTHENTICATE)
    assert client.protection_level is ProtectionLevel.SIGN
    with pytest.raises(ProtectionLevelError, match="'sign' but 'encrypt_and_sign' is required") as info:
        server.step(authenticate)
    assert info.value.status == ERROR_TRUST_FAILURE  # what .NET sends for a level mismatch


def test_server_level_is_a_minimum(ntlm_users: NTLMUsers) -> None:
    """A server asking for level none accepts a sealing client, and both sides then seal."""
    client, server = established(
        ntlm_users,
        client_options={"protection_level": "encrypt_and_sign"},
        server_options={"protection_level": "none"},
    )
    assert client.protection_level is server.protection_level is ProtectionLevel.ENCRYPT_AND_SIGN
    record = client.protect(PLAINTEXT)
    assert PLAINTEXT not in record and b"attack" not in record
    assert server.unprotect(record) == PLAINTEXT


def test_client_requiring_seal_against_server_minimum_sign_gets_seal(ntlm_users: NTLMUsers) -> None:
    """A sealing client and a server whose minimum is sign end up sealing."""
    _client, server = established(
        ntlm_users,
        client_options={"protection_level": "encrypt_and_sign"},
        server_options={"protection_level": "sign"},
    )
    assert server.protection_level is ProtectionLevel.ENCRYPT_AND_SIGN


def test_require_mutual_auth_with_ntlm_fails(ntlm_users: NTLMUsers) -> None:
    """NTLM cannot authenticate the server: require_mutual_auth fails on the CHALLENGE with SEC_E_LOGON_DENIED."""
    client, server = context_pair(ntlm_users, client_options={"require_mutual_auth": True})
    challenge = server.step(client.step(None))
    with pytest.raises(AuthenticationError, match="mutual authentication") as info:
        client.step(challenge)
    assert type(info.value) is AuthenticationError
    assert info.value.status == SEC_E_LOGON_DENIED
    assert not server.complete


def test_ntlm_fallback_refused_before_authenticate_is_produced(ntlm_users: NTLMUsers) -> None:
    """allow_ntlm_fallback=False fails with SEC_E_LOGON_DENIED before an NTLM AUTHENTICATE is produced."""
    client, server = context_pair(ntlm_users, protocol="negotiate", client_options={"allow_ntlm_fallback": False})
    produced: list[bytes] = []
    with pytest.raises(AuthenticationError, match="NTLM fallback is disabled") as info:
        token = client.step(None)
        while token is not None:  # pragma: no cover - only runs if the first step does not refuse
            produced.append(token)
            reply = server.step(token)
            assert reply is not None
            token = client.step(reply)
    assert "allow_ntlm_fallback" in str(info.value)
    assert info.value.status == SEC_E_LOGON_DENIED
    assert not any(NTLM_AUTHENTICATE in token for token in produced)
    assert not server.complete


def test_session_properties(ntlm_users: NTLMUsers) -> None:
    """Before the handshake nothing is known; after it the peer identities and the stream sizes are."""
    client, server = context_pair(ntlm_users, target="HTTP/web.example.com")
    assert client.negotiated_protocol in (None, "ntlm")
    assert client.peer_identity is None
    context_handshake(client, server)
    assert server.peer_identity == "NEGOTIATE-TEST\\alice"
    assert client.peer_identity == "HTTP/web.example.com"
    assert not client.is_mutually_authenticated and not server.is_mutually_authenticated
    sizes = client.stream_sizes(0xFC00)
    assert (sizes.header, sizes.trailer, sizes.max_message) == (16, 0, 0xFC00)


def test_select_protection_level_bounds(ntlm_users: NTLMUsers) -> None:
    """select_protection_level() accepts only what was negotiated: not above, not below the required level."""
    client, _server = established(ntlm_users, protection_level="sign")
    with pytest.raises(ProtectionLevelError):
        client.select_protection_level("encrypt_and_sign")
    with pytest.raises(ProtectionLevelError):
        client.select_protection_level("none")  # below the required 'sign'
    client.select_protection_level("sign")
    assert client.protection_level is ProtectionLevel.SIGN


def test_wrap_message_round_trip(ntlm_users: NTLMUsers) -> None:
    """wrap_message/unwrap_message round-trip; a replayed or altered message is an IntegrityError."""
    client, server = established(ntlm_users)
    token = server.wrap_message(b"\x06\xff\xff\xff")
    assert client.unwrap_message(token) == b"\x06\xff\xff\xff"
    with pytest.raises(IntegrityError):
        client.unwrap_message(token)  # replayed
    client, server = established(ntlm_users)
    assert client.unwrap_message(server.wrap_message(b"\x06\xff\xff\xff")) == b"\x06\xff\xff\xff"
    bad = bytearray(server.wrap_message(b"\x02\x00\x10\x00"))
    bad[-1] ^= 0x80
    with pytest.raises(IntegrityError):
        client.unwrap_message(bytes(bad))


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
    """ProtectionLevel.parse() accepts the .NET names and the common aliases, case-insensitively."""
    assert ProtectionLevel.parse(text) is level


def test_bad_options_rejected() -> None:
    """Unknown protection levels and protocols and a malformed SPN are ValueErrors naming the option."""
    with pytest.raises(ValueError, match="unknown protection level"):
        ProtectionLevel.parse("paranoid")
    with pytest.raises(ValueError, match="protection level"):
        SecurityContext.client(protection_level="paranoid")
    with pytest.raises(ValueError, match="unknown protocol"):
        SecurityContext.client(protocol="basic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="protocol"):
        SecurityContext.client(protocol="digest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="service principal name"):
        SecurityContext.client(target="/host", protocol="ntlm")


def test_context_repr_hides_password(ntlm_users: NTLMUsers) -> None:
    """Context reprs show side, protocol, target and state, never the password, before and after the handshake."""
    password = ntlm_users.password("alice")
    client, server = context_pair(ntlm_users)
    for ctx in (client, server):
        assert password not in repr(ctx)
        assert password not in str(ctx)
    assert repr(client).startswith("<SecurityContext client protocol=ntlm target='host/localhost' handshaking")
    context_handshake(client, server)
    assert "complete" in repr(server)
    for ctx in (client, server):
        assert password not in repr(ctx)
    assert repr(client).startswith("<SecurityContext client protocol=ntlm")


def test_credentials_repr_hides_password(ntlm_users: NTLMUsers) -> None:
    """Credentials reprs hide the password; principal is DOMAIN\\user, or the UPN as given, or None."""
    password = ntlm_users.password("alice")
    credentials = ntlm_users.client_credentials()
    assert credentials.password == password
    assert password not in repr(credentials) and password not in str(credentials)
    assert "alice" in repr(credentials)
    assert repr(Credentials(username="bob", password="hunter2")).count("hunter2") == 0
    creds = Credentials(username="bob", password="Sup3r-Secret-Passw0rd", domain="CORP")
    assert "Sup3r-Secret-Passw0rd" not in repr(creds)
    assert "Sup3r-Secret-Passw0rd" not in str(creds)
    assert "username='bob'" in repr(creds)
    assert creds.principal == "CORP\\bob"
    assert Credentials(username="bob@REALM", domain="CORP").principal == "bob@REALM"
    assert Credentials().principal is None


def test_shares_crypto_state_false_by_default(ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch) -> None:
    """With Extended Session Security (the default) each direction has its own keys and counter."""
    monkeypatch.delenv("LM_COMPAT_LEVEL", raising=False)
    client, server = established(ntlm_users)
    assert client.shares_crypto_state is False
    assert server.shares_crypto_state is False


@pytest.mark.parametrize("protocol", ["ntlm", "negotiate"])
def test_shares_crypto_state_without_ess(ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch, protocol: str) -> None:
    """NTLMv1 without ESS shares one RC4 state and counter; strictly alternating traffic still verifies."""
    monkeypatch.setenv("LM_COMPAT_LEVEL", "0")
    client, server = established(ntlm_users, protocol=protocol)
    assert client.shares_crypto_state is True
    assert server.shares_crypto_state is True
    for i in range(3):
        assert server.unprotect(client.protect(b"ping %d" % i)) == b"ping %d" % i
        assert client.unprotect(server.protect(b"pong %d" % i)) == b"pong %d" % i
