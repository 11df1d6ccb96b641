"""Secrets hygiene: passwords, NT hashes and session keys never reach logs, reprs or exception messages."""

from __future__ import annotations

import base64
import logging
import os
import stat
import traceback

import pytest

from negotiate_stream import Connection, Credentials, NegotiateError, SecurityContext
from negotiate_stream.testing import NTLMUsers, connection_pair, exchange, handshake, transfer

PASSWORD = "Pa55-w0rd!correct-horse"
WRONG_PASSWORD = "Wr0ng-pa55!battery-staple"


def _nt_hash(password: str) -> str:
    from hashlib import new

    try:
        return new("md4", password.encode("utf-16-le")).hexdigest()
    except ValueError:  # OpenSSL 3 without the legacy provider: use pyspnego's own MD4 through its public helper
        from spnego._ntlm_raw.crypto import ntowfv1

        return ntowfv1(password).hex()


def _secret_forms(password: str) -> list[str]:
    nt_hash = _nt_hash(password)
    return [password, nt_hash.lower(), nt_hash.upper(), password.encode("utf-16-le").decode("latin-1")]


def _session_key_forms(conn: Connection) -> list[str]:
    key = bytes(conn.context._ctx.session_key)  # the negotiated key, read only to look for leaks
    assert len(key) == 16
    return [key.hex(), key.hex().upper(), base64.b64encode(key).decode(), repr(key)[2:-1]]


def _exception_texts(exc: BaseException) -> list[str]:
    texts = ["".join(traceback.format_exception(exc))]
    seen: BaseException | None = exc
    while seen is not None:
        texts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return texts


def _assert_absent(secrets: list[str], texts: list[str]) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text, f"a secret leaked into: {text[:200]!r}"


@pytest.fixture
def users() -> NTLMUsers:
    with NTLMUsers({"alice": PASSWORD}) as accounts:
        yield accounts  # type: ignore[misc]


@pytest.mark.parametrize("protocol", ["ntlm", "negotiate"])
@pytest.mark.parametrize("level", ["none", "sign", "encrypt_and_sign"])
def test_successful_session_leaks_nothing(
    users: NTLMUsers, caplog: pytest.LogCaptureFixture, protocol: str, level: str
) -> None:
    caplog.set_level(logging.DEBUG)
    client, server = connection_pair(users, protocol=protocol, protection_level=level)
    client_info, server_info = handshake(client, server)
    assert transfer(client, server, b"hello") == b"hello"
    assert transfer(server, client, b"world") == b"world"
    secrets = _secret_forms(PASSWORD) + _session_key_forms(client)
    assert _session_key_forms(client) == _session_key_forms(server)  # the same key on both sides
    objects = [
        users,
        users.client_credentials(),
        users.server_credentials(),
        client.context,
        server.context,
        client,
        server,
        client_info,
        server_info,
    ]
    texts = [caplog.text] + [repr(o) for o in objects] + [str(o) for o in objects]
    assert caplog.records, "DEBUG logging was not captured: the test would prove nothing"
    _assert_absent(secrets, texts)


@pytest.mark.parametrize("protocol", ["ntlm", "negotiate"])
def test_failed_handshake_leaks_nothing(users: NTLMUsers, caplog: pytest.LogCaptureFixture, protocol: str) -> None:
    caplog.set_level(logging.DEBUG)
    client, server = connection_pair(
        users, protocol=protocol, client_options={"credentials": users.client_credentials(password=WRONG_PASSWORD)}
    )
    exchange(client, server)
    exchange(server, client)
    server.receive_data(client.data_to_send())
    with pytest.raises(NegotiateError) as server_error:
        server.next_event()
    client.receive_data(server.data_to_send())
    with pytest.raises(NegotiateError) as client_error:
        client.next_event()
    later: list[BaseException] = []
    for conn in (client, server):
        try:
            conn.send(b"x")
        except NegotiateError as exc:
            later.append(exc)
    assert len(later) == 2
    texts = [caplog.text, repr(client), repr(server), repr(client.context), repr(server.context)]
    for exc in (server_error.value, client_error.value, *later):
        texts += _exception_texts(exc)
    _assert_absent(_secret_forms(PASSWORD) + _secret_forms(WRONG_PASSWORD), texts)


def test_context_creation_failure_leaks_nothing(users: NTLMUsers) -> None:
    with pytest.raises(NegotiateError) as info:
        SecurityContext.client(
            credentials=Credentials(username="alice", password=PASSWORD, domain="X"),
            protocol="negotiate",
            allow_ntlm_fallback=False,
        ).step(None)
    _assert_absent(_secret_forms(PASSWORD), _exception_texts(info.value))


def test_credentials_repr_and_user_file(users: NTLMUsers) -> None:
    credentials = users.client_credentials()
    assert credentials.password == PASSWORD
    assert "password" not in repr(credentials)
    assert PASSWORD not in repr(Credentials(username="u", password=PASSWORD, domain="D"))
    # The acceptor's file holds hashes, never the password, and only its owner may read it.
    with open(users.path, encoding="utf-8") as handle:
        content = handle.read()
    assert PASSWORD not in content
    assert _nt_hash(PASSWORD).upper() in content
    assert stat.S_IMODE(os.stat(users.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(users.path)).st_mode) & 0o077 == 0
