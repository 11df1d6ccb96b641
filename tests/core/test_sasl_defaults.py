"""Defaults that LDAP peers (Windows, Samba) need: NTLM at level none without KEY_EXCH, NTLM sign sealed under SASL.

Level none: pyspnego's NTLM initiator offers KEY_EXCH and then sends a 1-byte EncryptedRandomSessionKey, which
Samba refuses (LDAP 49, "data 57"); raw NTLM already cleared the flag, SPNEGO's inner NTLM did not. Sign under
SASL framing: Windows and Samba seal LDAP-style NTLM sign (``force_wrap_seal``), so ``ntlm_seal_sign_only=None``
(auto, the default) seals there, while MS-NNS and a context used alone keep the Windows layout (signature +
plaintext); an explicit True or False wins both ways.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import pytest
from spnego._spnego import NegTokenInit, unpack_token

from negotiate_stream import Connection, Data, HandshakeComplete, IntegrityError, ProtectionLevel, SecurityContext
from negotiate_stream._spnego.ntlm_authenticate import NTLM_AUTHENTICATE_PREFIX, parse_authenticate
from negotiate_stream.testing import NTLMUsers, connection_pair, handshake
from tests.support.core import context_handshake, context_pair, data_of, feed

PROTOCOLS = ["ntlm", "negotiate"]
KEY_EXCH = 0x40000000  # NTLMSSP_NEGOTIATE_KEY_EXCH
SESSION_KEY_FIELD = 52  # AUTHENTICATE_MESSAGE EncryptedRandomSessionKeyFields: length, maximum length, offset
PLAINTEXT = b"attack at dawn, " * 8
SIGNATURE = 16  # an NTLM signature: version, checksum, sequence number
NNS_HEADER = 4  # MS-NNS and SASL both put a 4-byte length before each record's payload
SWITCH = "NEGOTIATE_STREAM_NTLM_FAST_PATH"


@pytest.fixture(params=["fast", "pyspnego"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test on each NTLM record path (the layout must not depend on it)."""
    monkeypatch.delenv(SWITCH, raising=False)
    if request.param == "pyspnego":
        monkeypatch.setenv(SWITCH, "0")
    yield request.param


def authenticate_of(tokens: list[bytes]) -> bytes:
    """The client's NTLM AUTHENTICATE message, raw or inside its SPNEGO token."""
    for token in tokens:
        start = token.find(NTLM_AUTHENTICATE_PREFIX)
        if start >= 0:
            return token[start:]
    raise AssertionError("the client sent no AUTHENTICATE message")


def handshake_tokens(users: NTLMUsers, **options: Any) -> tuple[list[bytes], SecurityContext, SecurityContext]:
    """Every token the client produced in a completed handshake, and both contexts."""
    client, server = context_pair(users, **options)
    return context_handshake(client, server), client, server


# -- level none: no KEY_EXCH, raw or inside SPNEGO -----------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_level_none_authenticate_has_no_key_exch(ntlm_users: NTLMUsers, protocol: str) -> None:
    """At level none the AUTHENTICATE message has no KEY_EXCH flag and no (1-byte) encrypted session key."""
    tokens, client, server = handshake_tokens(ntlm_users, protocol=protocol, protection_level="none")
    authenticate = authenticate_of(tokens)
    assert not parse_authenticate(authenticate).flags & KEY_EXCH
    key_length, _, _ = struct.unpack_from("<HHI", authenticate, SESSION_KEY_FIELD)
    assert key_length == 0
    assert client.protection_level is server.protection_level is ProtectionLevel.NONE
    assert client.negotiated_protocol == server.negotiated_protocol == "ntlm"


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("level", ["sign", "encrypt_and_sign"])
def test_signed_levels_keep_key_exch(ntlm_users: NTLMUsers, protocol: str, level: str) -> None:
    """Signed or sealed, KEY_EXCH stays offered and the encrypted session key is 16 bytes (as Windows sends)."""
    tokens, _, _ = handshake_tokens(ntlm_users, protocol=protocol, protection_level=level)
    authenticate = authenticate_of(tokens)
    assert parse_authenticate(authenticate).flags & KEY_EXCH
    key_length, _, _ = struct.unpack_from("<HHI", authenticate, SESSION_KEY_FIELD)
    assert key_length == 16


def test_level_none_spnego_offers_the_mechanisms_pyspnego_would(ntlm_users: NTLMUsers) -> None:
    """The mechanisms built ahead for level none are the ones, in the order, pyspnego builds at other levels."""
    offered = []
    for level in ("none", "sign"):
        context = SecurityContext.client(
            credentials=ntlm_users.client_credentials(), protocol="negotiate", protection_level=level
        )
        token = context.step(None)
        assert token is not None
        init = unpack_token(token)
        assert isinstance(init, NegTokenInit)
        offered.append(init.mech_types)
    assert offered[0] == offered[1]


# -- sign: the NTLM layout follows the framing unless ntlm_seal_sign_only says otherwise ---------------------------


def sasl_pair(users: NTLMUsers, protocol: str, **options: Any) -> tuple[Connection, Connection]:
    """Two SASL Connections at level sign over contexts completed as a SASL bind would, HandshakeComplete read."""
    client_ctx, server_ctx = context_pair(users, protocol=protocol, protection_level="sign", **options)
    context_handshake(client_ctx, server_ctx)
    pair = Connection(client_ctx, framing="sasl"), Connection(server_ctx, framing="sasl")
    for conn in pair:
        event = conn.next_event()
        assert isinstance(event, HandshakeComplete) and event.info.protection_level is ProtectionLevel.SIGN
    return pair


def nns_pair(users: NTLMUsers, protocol: str, **options: Any) -> tuple[Connection, Connection]:
    """Two MS-NNS Connections at level sign after their in-memory handshake."""
    client, server = connection_pair(users, protocol=protocol, protection_level="sign", **options)
    handshake(client, server)
    return client, server


def payloads(sender: Connection, receiver: Connection, message: bytes) -> bytes:
    """Send ``message`` in one record, check that ``receiver`` reads it back, return the record's payload."""
    wire = sender.send(message)
    assert int.from_bytes(wire[:NNS_HEADER], "big" if sender.framing == "sasl" else "little") == len(wire) - NNS_HEADER
    assert data_of(feed(receiver, wire)) == message
    return wire[NNS_HEADER:]


def assert_layout(client: Connection, server: Connection, *, sealed: bool) -> None:
    """Both directions use the sealed layout (no plaintext after the signature) or the Windows one."""
    for sender, receiver, message in ((client, server, PLAINTEXT), (server, client, PLAINTEXT[::-1])):
        payload = payloads(sender, receiver, message)
        assert len(payload) == SIGNATURE + len(message) and payload[:4] == b"\x01\x00\x00\x00"
        if sealed:
            assert payload[SIGNATURE:] != message and b"attack" not in payload and b"nwad" not in payload
        else:
            assert payload[SIGNATURE:] == message


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sasl_ntlm_sign_is_sealed_by_default(ntlm_users: NTLMUsers, protocol: str, path: str) -> None:
    """Under SASL framing NTLM sign uses the sealed layout by default (LDAP-style, Windows and Samba)."""
    client, server = sasl_pair(ntlm_users, protocol)
    assert client.context.ntlm_seal_sign_only is None and client.context.record_path == path
    assert_layout(client, server, sealed=True)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_nns_ntlm_sign_keeps_the_windows_layout_by_default(ntlm_users: NTLMUsers, protocol: str, path: str) -> None:
    """Under MS-NNS framing NTLM sign stays signature + plaintext by default (.NET NegotiateStream on Windows)."""
    client, server = nns_pair(ntlm_users, protocol)
    assert client.context.ntlm_seal_sign_only is None and client.context.record_path == path
    assert_layout(client, server, sealed=False)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_explicit_values_win_over_the_framing(ntlm_users: NTLMUsers, protocol: str, path: str) -> None:
    """``ntlm_seal_sign_only=False`` keeps the Windows layout under SASL; ``True`` seals under MS-NNS."""
    assert_layout(*sasl_pair(ntlm_users, protocol, ntlm_seal_sign_only=False), sealed=False)
    assert_layout(*nns_pair(ntlm_users, protocol, ntlm_seal_sign_only=True), sealed=True)


def test_auto_sasl_side_talks_to_an_explicitly_sealing_peer(ntlm_users: NTLMUsers) -> None:
    """An auto client under SASL and a server built with ``ntlm_seal_sign_only=True`` (as an LDAP server) agree."""
    client, server = sasl_pair(ntlm_users, "negotiate", server_options={"ntlm_seal_sign_only": True})
    assert_layout(client, server, sealed=True)


def test_auto_sasl_side_refuses_the_windows_layout(ntlm_users: NTLMUsers) -> None:
    """A peer that sends the Windows layout to an auto SASL side fails its check, as Samba refuses it."""
    client, server = sasl_pair(ntlm_users, "ntlm", client_options={"ntlm_seal_sign_only": False})
    server.receive_data(client.send(PLAINTEXT))
    with pytest.raises(IntegrityError):
        server.next_event()


def test_context_alone_keeps_the_windows_layout_until_told_the_framing(ntlm_users: NTLMUsers) -> None:
    """Without a Connection, auto is the Windows layout; ``set_framing("sasl")`` on both ends switches to sealed."""
    client, server = context_pair(ntlm_users, protection_level="sign")
    context_handshake(client, server)
    first = client.protect(PLAINTEXT)
    assert first[SIGNATURE:] == PLAINTEXT and server.unprotect(first) == PLAINTEXT
    for context in (client, server):
        context.set_framing("sasl")
    second = client.protect(PLAINTEXT)
    assert b"attack" not in second and server.unprotect(second) == PLAINTEXT
    with pytest.raises(ValueError, match="framing must be"):
        client.set_framing("tls")  # type: ignore[arg-type]


def test_set_framing_keeps_a_rejection_sticky(ntlm_users: NTLMUsers) -> None:
    """After a rejected record, choosing the framing (new record functions) does not accept records again."""
    client, server = context_pair(ntlm_users, protection_level="sign")
    context_handshake(client, server)
    record = bytearray(client.protect(PLAINTEXT))
    record[-1] ^= 1
    with pytest.raises(IntegrityError):
        server.unprotect(bytes(record))
    server.set_framing("sasl")
    with pytest.raises(IntegrityError, match="already rejected"):
        server.unprotect(client.protect(PLAINTEXT))


def test_sasl_level_sign_data_events(ntlm_users: NTLMUsers) -> None:
    """A sealed-by-default SASL sign session carries several messages each way, in order."""
    client, server = sasl_pair(ntlm_users, "negotiate")
    for i in range(3):
        server.receive_data(client.send(b"request %d" % i))
        assert server.next_event() == Data(b"request %d" % i)
        client.receive_data(server.send(b"reply %d" % i))
        assert client.next_event() == Data(b"reply %d" % i)
