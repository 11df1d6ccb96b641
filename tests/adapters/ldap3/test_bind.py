"""negotiate_stream.ldap3 against an honest fake LDAP server: the bind, its options, its refusals, the operations."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import ldap3
import pytest
from cryptography.hazmat.primitives import hashes

from negotiate_stream import AuthenticationError, LocalProtocolError, ProtectionLevel
from negotiate_stream.channel_bindings import tls_server_end_point
from negotiate_stream.errors import SEC_E_BAD_BINDINGS, SEC_E_LOGON_DENIED, SEC_E_QOP_NOT_SUPPORTED
from negotiate_stream.ldap3 import SUPPORTED_STRATEGIES, SaslBindError, SaslSession, bind
from negotiate_stream.testing import NTLMUsers
from tests.support.ldap import FakeLdapServer, RecordCounter, RecordingSocket
from tests.support.tls import self_signed_channel

BASE = "DC=fake,DC=test"


def connection(server: FakeLdapServer, **options: Any) -> ldap3.Connection:
    """An unbound ldap3 connection to the fake server (no server info: the fake has no rootDSE)."""
    use_ssl = server.tls is not None
    target = ldap3.Server("127.0.0.1", port=server.port, use_ssl=use_ssl, get_info=ldap3.NONE)
    return ldap3.Connection(target, receive_timeout=10, **options)


@pytest.fixture
def honest_server(ntlm_users: NTLMUsers) -> Iterator[FakeLdapServer]:
    """A fake server that answers every operation."""
    with FakeLdapServer(ntlm_users) as server:
        yield server


@pytest.mark.parametrize("protocol", ["ntlm", "negotiate"])
@pytest.mark.parametrize("level", ["sign", "encrypt_and_sign"])
def test_every_operation_goes_through_sasl_records(ntlm_users: NTLMUsers, protocol: str, level: str) -> None:
    """Search, add, modify, delete, an extended operation and the unbind all travel in SASL records."""
    with FakeLdapServer(ntlm_users) as server:
        conn = connection(server)
        conn.open(read_server_info=False)
        wire = conn.socket = RecordingSocket(conn.socket)
        session = bind(conn, credentials=ntlm_users.client_credentials(), protocol=protocol, protection_level=level)
        assert isinstance(session, SaslSession) and session.mechanism == "GSS-SPNEGO" and not session.tls
        assert session.info.protocol == "ntlm" and session.info.protection_level is ProtectionLevel(level)
        assert session.info.framing == "sasl" and conn.bound
        assert conn.search(BASE, "(objectClass=*)", attributes=["description"])
        assert conn.entries[0].description.value == "sealed by the fake server"
        assert conn.add(f"CN=new,{BASE}", "contact", {"description": "added"})
        assert conn.modify(f"CN=new,{BASE}", {"description": [(ldap3.MODIFY_REPLACE, ["changed"])]})
        assert conn.delete(f"CN=new,{BASE}")
        assert conn.extended("1.3.6.1.4.1.4203.1.11.3")
        conn.unbind()
    assert server.session is not None and server.error is None
    assert [request.tag for request in server.session.requests] == [0x63, 0x68, 0x66, 0x4A, 0x77, 0x42]
    # LDAP-style NTLM: "sign" is sealed on the wire too, so neither direction shows the plaintext.
    assert b"sealed by the fake server" not in wire.received and b"changed" not in wire.sent


def test_messages_larger_than_a_record_span_several_records(
    honest_server: FakeLdapServer, ntlm_users: NTLMUsers
) -> None:
    """A 100 kB request and a 100 kB response each travel in several SASL records and arrive whole."""
    conn = connection(honest_server)
    bind(conn, credentials=ntlm_users.client_credentials(), protocol="ntlm", read_server_info=False)
    counter = RecordCounter(conn.socket.connection)
    assert conn.add(f"CN=big,{BASE}", "contact", {"description": "y" * 100_000})
    assert conn.search(f"CN=big,{BASE}", "(objectClass=*)", attributes=["description"])
    assert conn.entries[0].description.value == "x" * 100_000
    assert len(counter.sizes) >= 2 and max(counter.sizes) <= 0xFC00
    conn.unbind()
    server_session = honest_server.session
    assert server_session is not None and server_session.requests[0].tag == 0x68


def test_safe_sync_strategy_is_supported(honest_server: FakeLdapServer, ntlm_users: NTLMUsers) -> None:
    """SAFE_SYNC connections bind and return their (status, result, response, request) tuples as usual."""
    conn = connection(honest_server, client_strategy=ldap3.SAFE_SYNC)
    bind(conn, credentials=ntlm_users.client_credentials(), protocol="ntlm", read_server_info=False)
    status, result, response, _ = conn.search(BASE, "(objectClass=*)", attributes=["description"])
    assert status and result["result"] == 0
    assert response[0]["attributes"]["description"] == ["sealed by the fake server"]
    conn.unbind()


def test_defaults_seal_and_name_the_ldap_service(honest_server: FakeLdapServer, ntlm_users: NTLMUsers) -> None:
    """Without options the session is sealed and the target is ldap/<the server's host>."""
    conn = connection(honest_server)
    session = bind(conn, credentials=ntlm_users.client_credentials(), read_server_info=False)
    assert session.info.protection_level is ProtectionLevel.ENCRYPT_AND_SIGN
    assert session.info.peer_identity == "ldap/127.0.0.1"
    assert session.channel_bindings is None
    conn.unbind()


@pytest.fixture
def ldaps_server(ntlm_users: NTLMUsers) -> Iterator[tuple[FakeLdapServer, bytes]]:
    """A fake ldaps:// server (certificate signed with SHA-384, no SASL layer) whose acceptor requires the
    certificate's tls-server-end-point bindings; with those bindings, computed here from the certificate."""
    tls = self_signed_channel(signature_hash=hashes.SHA384())
    bindings = tls_server_end_point(tls.certificate)
    with FakeLdapServer(ntlm_users, tls=tls.server, protection_level="none", channel_bindings=bindings) as server:
        yield server, bindings


def test_ldaps_sends_channel_bindings_of_the_server_certificate(
    ldaps_server: tuple[FakeLdapServer, bytes], ntlm_users: NTLMUsers
) -> None:
    """Over ldaps:// the bindings come from the server certificate (SHA-384 signed) and the acceptor checks them."""
    server, expected = ldaps_server
    conn = connection(server)
    session = bind(conn, credentials=ntlm_users.client_credentials(), protocol="ntlm", read_server_info=False)
    assert session.tls and session.channel_bindings == expected
    # TLS protects the session: no SASL layer inside it, as AD and Samba require.
    assert session.info.protection_level is ProtectionLevel.NONE
    assert conn.search(BASE, "(objectClass=*)", attributes=["description"])
    assert conn.entries[0].description.value == "sealed by the fake server"
    conn.unbind()


def test_channel_bindings_override_is_sent_and_refused_when_wrong(
    ldaps_server: tuple[FakeLdapServer, bytes], ntlm_users: NTLMUsers
) -> None:
    """channel_bindings= replaces the automatic value; the acceptor refuses a wrong one (SEC_E_BAD_BINDINGS)."""
    server, _ = ldaps_server
    conn = connection(server)
    with pytest.raises(SaslBindError) as caught:
        bind(conn, credentials=ntlm_users.client_credentials(), protocol="ntlm", channel_bindings=b"mitm")
    assert caught.value.result_code == 49 and caught.value.status == SEC_E_BAD_BINDINGS
    conn.unbind()


def test_wrong_password_is_invalid_credentials(ntlm_users: NTLMUsers) -> None:
    """A refused password is SaslBindError with result code 49 and the SSPI code of the diagnostic message."""
    with FakeLdapServer(ntlm_users) as server:
        conn = connection(server)
        with pytest.raises(SaslBindError) as caught:
            bind(conn, credentials=ntlm_users.client_credentials(password="wrong"), protocol="ntlm")
        error = caught.value
        assert isinstance(error, AuthenticationError)
        assert error.result_code == 49 and error.result_name == "invalidCredentials"
        assert error.status == SEC_E_LOGON_DENIED and "invalidCredentials (49)" in str(error)
        assert not conn.bound and not conn.closed  # like ldap3's own failed bind: unbound, still open
        copy = pickle.loads(pickle.dumps(error))
        assert (copy.result_code, copy.status, copy.server_message) == (49, error.status, error.server_message)
        conn.unbind()


def test_raise_exceptions_connections_get_our_error_too(ntlm_users: NTLMUsers) -> None:
    """With raise_exceptions=True the refusal is still SaslBindError, not ldap3's own result exception."""
    with FakeLdapServer(ntlm_users) as server:
        conn = connection(server, raise_exceptions=True)
        with pytest.raises(SaslBindError) as caught:
            bind(conn, credentials=ntlm_users.client_credentials(password="wrong"), protocol="ntlm")
        assert caught.value.result_code == 49
        conn.unbind()


def test_unsigned_bind_is_stronger_auth_required(ntlm_users: NTLMUsers) -> None:
    """A server requiring signing refuses protection_level='none': result code 8, SEC_E_QOP_NOT_SUPPORTED."""
    with FakeLdapServer(ntlm_users, protection_level="sign") as server:
        conn = connection(server)
        with pytest.raises(SaslBindError) as caught:
            bind(conn, credentials=ntlm_users.client_credentials(), protocol="ntlm", protection_level="none")
        assert caught.value.result_code == 8 and caught.value.result_name == "strongerAuthRequired"
        assert caught.value.status == SEC_E_QOP_NOT_SUPPORTED
        conn.unbind()


def test_success_before_the_context_completes_is_refused(ntlm_users: NTLMUsers) -> None:
    """A server that says success too early gets AuthenticationError, and the connection is closed."""
    with FakeLdapServer(ntlm_users, early_success=True) as server:
        conn = connection(server)
        with pytest.raises(AuthenticationError, match="before the security context"):
            bind(conn, credentials=ntlm_users.client_credentials(), protocol="ntlm")
        assert conn.closed and not conn.bound


@pytest.mark.parametrize(
    "strategy", [ldap3.ASYNC, ldap3.RESTARTABLE, ldap3.SAFE_RESTARTABLE, ldap3.MOCK_SYNC, ldap3.LDIF]
)
def test_other_strategies_are_refused(strategy: str) -> None:
    """Only SYNC and SAFE_SYNC are supported; the others are refused before anything is sent."""
    assert strategy not in SUPPORTED_STRATEGIES
    conn = ldap3.Connection(ldap3.Server("127.0.0.1", port=1, get_info=ldap3.NONE), client_strategy=strategy)
    with pytest.raises(LocalProtocolError, match=r"not supported: use client_strategy=ldap3\.SYNC"):
        bind(conn)


def test_lazy_and_bound_connections_are_refused(honest_server: FakeLdapServer, ntlm_users: NTLMUsers) -> None:
    """A lazy connection, and one already bound, are refused with LocalProtocolError."""
    lazy = ldap3.Connection(ldap3.Server("127.0.0.1", port=1, get_info=ldap3.NONE), lazy=True)
    with pytest.raises(LocalProtocolError, match="lazy"):
        bind(lazy)
    conn = connection(honest_server)
    bind(conn, credentials=ntlm_users.client_credentials(), protocol="ntlm", read_server_info=False)
    with pytest.raises(LocalProtocolError, match="already bound"):
        bind(conn, credentials=ntlm_users.client_credentials(), protocol="ntlm")
    conn.unbind()


def test_gssapi_mechanism_is_kerberos_only() -> None:
    """mechanism='GSSAPI' (RFC 4752) with NTLM, or an unknown mechanism, is a ValueError before any I/O."""
    conn = ldap3.Connection(ldap3.Server("127.0.0.1", port=1, get_info=ldap3.NONE))
    with pytest.raises(ValueError, match="Kerberos only"):
        bind(conn, mechanism="GSSAPI", protocol="ntlm")
    with pytest.raises(ValueError, match="unknown SASL mechanism"):
        bind(conn, mechanism="DIGEST-MD5")  # type: ignore[arg-type]
