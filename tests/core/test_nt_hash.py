"""NT-hash client credentials (``Credentials(nt_hash=...)``): validation, NTLM end to end, and no leak of the hash."""

from __future__ import annotations

import base64
import logging

import pytest

from negotiate_stream import AuthenticationError, Credentials, NegotiateError, SecurityContext
from negotiate_stream.errors import SEC_E_LOGON_DENIED
from negotiate_stream.testing import NTLMUsers, connection_pair, handshake, transfer
from tests.support.core import refused_handshake, requires_gssapi

#: The password of the ``users`` fixture's account (tests/core/conftest.py).
PASSWORD = "Pa55-w0rd!hash-me"
#: A well-formed NT hash of no account (32 hex digits), for the cases that never authenticate.
NT_HASH = "0d6de4e6f1d87c5c3d3a9e5d2f3b2a63"


def real_hash(users: NTLMUsers) -> str:
    """The account's NT hash as the testing helper computes it."""
    credentials = users.client_credentials(nt_hash=True)
    assert credentials.nt_hash is not None and credentials.password is None
    return credentials.nt_hash


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"username": "alice", "nt_hash": "abc"}, "32 hexadecimal digits"),
        ({"username": "alice", "nt_hash": "z" * 32}, "32 hexadecimal digits"),
        ({"username": "alice", "nt_hash": NT_HASH, "password": "x"}, "without password"),
        ({"username": "alice", "nt_hash": NT_HASH, "ccache": "FILE:/tmp/cc"}, "without password"),
        ({"nt_hash": NT_HASH}, "needs the username"),
    ],
)
def test_invalid_nt_hash_credentials_are_refused_without_quoting_the_hash(fields: dict[str, str], message: str) -> None:
    """A malformed or conflicting nt_hash is a ValueError whose message never repeats the value."""
    with pytest.raises(ValueError, match=message) as caught:
        Credentials(**fields)
    assert fields["nt_hash"] not in str(caught.value)


def test_repr_hides_the_hash() -> None:
    """repr() of NT-hash credentials names the user and hides the hash, in either case."""
    credentials = Credentials(username="alice", domain="EXAMPLE", nt_hash=NT_HASH.upper())
    assert "alice" in repr(credentials) and "nt_hash" not in repr(credentials)
    assert NT_HASH not in repr(credentials).lower()
    assert credentials.principal == "EXAMPLE\\alice"


@pytest.mark.parametrize("protocol", ["ntlm", "negotiate"])
@pytest.mark.parametrize("upper", [False, True])
def test_nt_hash_client_authenticates_to_our_server(users: NTLMUsers, protocol: str, upper: bool) -> None:
    """A client holding only the NT hash (either case) authenticates as the account and exchanges sealed data."""
    nt_hash = real_hash(users)
    credentials = Credentials(username="alice", domain=users.domain, nt_hash=nt_hash.upper() if upper else nt_hash)
    client, server = connection_pair(users, protocol=protocol, client_options={"credentials": credentials})
    client_info, server_info = handshake(client, server)
    assert client_info.protocol == server_info.protocol == "ntlm"
    assert server_info.peer_identity == f"{users.domain}\\alice"
    assert transfer(client, server, b"hello from a hash") == b"hello from a hash"
    assert transfer(server, client, b"and back") == b"and back"


def test_wrong_nt_hash_is_a_logon_failure(users: NTLMUsers) -> None:
    """A wrong hash fails at the server (SEC_E_LOGON_DENIED) and the client gets the server's Error frame."""
    credentials = Credentials(username="alice", domain=users.domain, nt_hash="00" * 16)
    client, server = connection_pair(users, client_options={"credentials": credentials})
    refused_handshake(client, server, AuthenticationError, SEC_E_LOGON_DENIED)


def test_nt_hash_with_kerberos_is_refused() -> None:
    """An NT hash cannot authenticate with Kerberos: creating the context says so (or that Kerberos is missing)."""
    credentials = Credentials(username="alice@EXAMPLE.TEST", nt_hash=NT_HASH)
    with pytest.raises(AuthenticationError):
        SecurityContext.client(credentials=credentials, protocol="kerberos")


@requires_gssapi
def test_nt_hash_with_kerberos_names_ntlm() -> None:
    """With Kerberos installed the refusal says that the hash is for NTLM only."""
    credentials = Credentials(username="alice@EXAMPLE.TEST", nt_hash=NT_HASH)
    with pytest.raises(AuthenticationError, match="NTLM only"):
        SecurityContext.client(credentials=credentials, protocol="kerberos")


def _forms(nt_hash: str) -> list[str]:
    raw = bytes.fromhex(nt_hash)
    return [nt_hash.lower(), nt_hash.upper(), base64.b64encode(raw).decode(), repr(raw)[2:-1]]


@pytest.mark.parametrize("right", [True, False])
def test_hash_never_in_logs_errors_or_reprs(users: NTLMUsers, caplog: pytest.LogCaptureFixture, right: bool) -> None:
    """With every logger at DEBUG, the hash appears in no log record, error message or repr, for success or failure."""
    nt_hash = real_hash(users) if right else "0123456789abcdef" * 2
    credentials = Credentials(username="alice", domain=users.domain, nt_hash=nt_hash)
    texts: list[str] = []
    caplog.set_level(logging.DEBUG)
    client, server = connection_pair(users, protocol="negotiate", client_options={"credentials": credentials})
    try:
        infos = handshake(client, server)
        texts += [repr(info) for info in infos]
    except NegotiateError as exc:
        assert not right
        texts += [str(exc), repr(exc)]
    texts += [repr(credentials), repr(client), repr(server), repr(client.context), caplog.text]
    texts += [f"{record.name} {record.getMessage()}" for record in caplog.records]
    assert caplog.records, "DEBUG logging produced nothing: the test would prove nothing"
    for text in texts:
        for form in _forms(nt_hash):
            assert form not in text, f"the NT hash leaked into: {text[:200]!r}"
