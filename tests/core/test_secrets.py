"""Secrets hygiene: passwords, NT hashes and session keys never reach logs, reprs or exception texts.

The evidence is everything an attacker with access to logs, error reports and debug output could see: DEBUG log
records (tokens are logged base64-encoded, so decoded blobs are searched too), the reprs and strs of every object
of a session, and the whole ``__cause__`` / ``__context__`` chain and traceback of every error raised.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import stat
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from negotiate_stream import (
    NEED_DATA,
    Connection,
    Credentials,
    Data,
    EndOfStream,
    NegotiateError,
    SecurityContext,
    State,
)
from negotiate_stream.errors import KerberosUnavailableError
from negotiate_stream.testing import NTLMUsers, connection_pair, handshake
from tests.support.core import requires_gssapi

#: The password of the ``users`` fixture's account (tests/core/conftest.py).
PASSWORD = "Pa55-w0rd!correct-horse"
WRONG_PASSWORD = "Wr0ng-pa55!battery-staple"


def _nt_hash(password: str) -> str:
    from hashlib import new

    try:
        return new("md4", password.encode("utf-16-le")).hexdigest()
    except ValueError:  # OpenSSL 3 without the legacy provider: use pyspnego's own MD4 through its public helper
        from spnego._ntlm_raw.crypto import ntowfv1

        return str(ntowfv1(password).hex())


class Evidence:
    """The texts an attacker could read, and the session keys that must never appear in them."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.session_keys: list[bytes] = []

    def exception(self, exc: BaseException) -> None:
        """Record the traceback and every str/repr/arg along the ``__cause__`` / ``__context__`` chain."""
        self.texts.append("".join(traceback.format_exception(exc)))
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            self.texts += [str(current), repr(current), *map(str, current.args)]
            current = current.__cause__ or current.__context__

    def objects(self, *objects: object) -> None:
        """Record the repr and str of each object."""
        for obj in objects:
            self.texts += [repr(obj), str(obj)]

    def key_of(self, conn: Connection) -> None:
        """Remember ``conn``'s session key, so that the checker knows what must never be shown."""
        # Test-only peek at pyspnego's exported session key.
        key = conn.context._ctx.session_key
        if key:
            self.session_keys.append(bytes(key))


def _forbidden_forms(secret: bytes) -> list[str]:
    forms = [secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode(), repr(secret)[2:-1]]
    return [f for f in forms if len(f) >= 8]


def _base64_blobs(text: str) -> Iterator[bytes]:
    for match in re.finditer(r"[A-Za-z0-9+/]{16,}={0,2}", text):
        try:
            yield base64.b64decode(match.group(0) + "=" * (-len(match.group(0)) % 4))
        except (binascii.Error, ValueError):
            continue


def _log_texts(caplog: pytest.LogCaptureFixture) -> list[str]:
    # The handler's formatted text, and each record's name, message and exception text on their own.
    return [caplog.text, *(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)]


def assert_clean(evidence: Evidence, extra_texts: list[str]) -> None:
    """No password (plain, UTF-16, NT hash) and no session key, in any encoding, in any text of the evidence."""
    texts = [*evidence.texts, *extra_texts]
    passwords = [PASSWORD, WRONG_PASSWORD]
    plain_forms = [*passwords, *(p.encode("utf-16-le").decode("latin-1") for p in passwords)]
    secret_bytes = [
        *(p.encode("utf-16-le") for p in passwords),
        *(p.encode() for p in passwords),
        *(bytes.fromhex(_nt_hash(p)) for p in passwords),
        *evidence.session_keys,
    ]
    for text in texts:
        for form in plain_forms:
            assert form not in text, f"a password leaked into: {text[:200]!r}"
        for secret in secret_bytes:
            for form in _forbidden_forms(secret):
                assert form not in text, f"a secret leaked into: {text[:200]!r}"
        for blob in _base64_blobs(text):  # logged tokens are base64: look inside them too
            for secret in secret_bytes:
                assert secret not in blob, f"a secret leaked base64-encoded into: {text[:200]!r}"


def drive(client: Connection, server: Connection, evidence: Evidence) -> list[NegotiateError]:
    """Run the handshake, deliver a failing side's Error frame, then call both sides again; return every error."""
    errors: list[NegotiateError] = []
    try:
        handshake(client, server)
    except NegotiateError as exc:
        errors.append(exc)
        for conn, peer in ((client, server), (server, client)):
            frame = conn.data_to_send()
            if frame:
                try:
                    peer.receive_data(frame)
                    peer.next_event()
                except NegotiateError as peer_exc:
                    errors.append(peer_exc)
    for conn in (client, server):
        for call in (conn.next_event, lambda conn=conn: conn.send(b"x")):
            try:
                call()
            except NegotiateError as exc:
                errors.append(exc)
    for error in errors:
        evidence.exception(error)
    return errors


def make(users: NTLMUsers, *, password: str = PASSWORD, **options: Any) -> tuple[Connection, Connection]:
    """A Connection pair for ``alice`` whose client uses ``password``."""
    client_options = {"credentials": users.client_credentials(password=password), **options.pop("client_options", {})}
    return connection_pair(users, client_options=client_options, **options)


SCENARIOS: dict[str, Callable[[NTLMUsers], tuple[Connection, Connection]]] = {
    "ntlm-sealed": make,
    "ntlm-signed": lambda u: make(u, protection_level="sign"),
    "ntlm-none": lambda u: make(u, protection_level="none"),
    "negotiate-sealed": lambda u: make(u, protocol="negotiate"),
    "negotiate-signed": lambda u: make(u, protocol="negotiate", protection_level="sign"),
    "negotiate-none": lambda u: make(u, protocol="negotiate", protection_level="none"),
    "wrong-password": lambda u: make(u, password=WRONG_PASSWORD),
    "wrong-password-negotiate": lambda u: make(u, password=WRONG_PASSWORD, protocol="negotiate"),
    "level-mismatch": lambda u: make(
        u, client_options={"protection_level": "sign"}, server_options={"protection_level": "encrypt_and_sign"}
    ),
    "mutual-auth-required": lambda u: make(u, client_options={"require_mutual_auth": True}),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_no_secret_in_logs_errors_or_reprs(users: NTLMUsers, caplog: pytest.LogCaptureFixture, scenario: str) -> None:
    """Successful, tampered and failed sessions leak no password, NT hash or session key anywhere."""
    caplog.set_level(logging.DEBUG)
    evidence = Evidence()
    client, server = SCENARIOS[scenario](users)
    errors = drive(client, server, evidence)
    if client.info is not None and server.info is not None:
        assert errors == []
        evidence.key_of(client)
        evidence.key_of(server)
        assert len(evidence.session_keys) == 2 and evidence.session_keys[0] == evidence.session_keys[1]
        # Tamper after success too: the IntegrityError text must not leak anything either.
        if client.info.is_signed:
            record = bytearray(client.send(b"payload"))
            record[-1] ^= 1
            server.receive_data(bytes(record))
            with pytest.raises(NegotiateError) as info:
                server.next_event()
            evidence.exception(info.value)
            for call in (server.next_event, lambda: server.send(b"y")):
                with pytest.raises(NegotiateError) as later:
                    call()
                evidence.exception(later.value)
    else:
        # The failing side's error, the peer's error from the Error frame, then two refused calls on each side.
        assert len(errors) == 6, errors
        assert client.state is State.BROKEN and server.state is State.BROKEN
    evidence.objects(
        users,
        users.client_credentials(),
        users.client_credentials(password=WRONG_PASSWORD),
        users.server_credentials(),
        client,
        server,
        client.context,
        server.context,
        client.info,
        server.info,
    )
    assert caplog.records, "DEBUG logging was not captured: the test would prove nothing"
    assert_clean(evidence, _log_texts(caplog))
    if scenario.startswith("wrong"):
        assert any("rejected" in text for text in evidence.texts)  # the failure was actually recorded


def test_scenarios_really_log_and_produce_session_keys(users: NTLMUsers, caplog: pytest.LogCaptureFixture) -> None:
    """Guard against a vacuous pass: tokens are logged at DEBUG, the key is real, and the checker catches leaks."""
    caplog.set_level(logging.DEBUG)
    client, server = make(users)
    handshake(client, server)
    assert any("NTLM step" in r.getMessage() for r in caplog.records)
    key = client.context._ctx.session_key
    assert isinstance(key, bytes) and len(key) == 16
    assert key == server.context._ctx.session_key
    evidence = Evidence()
    evidence.session_keys.append(key)
    for leak in (
        f"key={key.hex()}",
        base64.b64encode(b"xx" + PASSWORD.encode("utf-16-le")).decode(),
        f"hash={_nt_hash(PASSWORD).upper()}",
        f"hash={_nt_hash(WRONG_PASSWORD)}",
        PASSWORD.encode("utf-16-le").decode("latin-1"),
    ):
        with pytest.raises(AssertionError):
            assert_clean(evidence, [leak])


def _failure_without_a_kdc(caplog: pytest.LogCaptureFixture, protocol: str) -> tuple[NegotiateError, Evidence]:
    """A client of an unknown realm, with no NTLM fallback, fails typed; its error and the DEBUG logs leak nothing."""
    caplog.set_level(logging.DEBUG)
    evidence = Evidence()
    with pytest.raises(NegotiateError) as info:
        SecurityContext.client(
            credentials=Credentials(username="alice", password=PASSWORD, domain="NO-SUCH-REALM.INVALID"),
            protocol=protocol,  # type: ignore[arg-type]
            allow_ntlm_fallback=False,
        ).step(None)
    evidence.exception(info.value)
    assert_clean(evidence, _log_texts(caplog))
    return info.value, evidence


@pytest.mark.parametrize("protocol", ["negotiate", "kerberos"])
def test_context_creation_failures_do_not_leak(caplog: pytest.LogCaptureFixture, protocol: str) -> None:
    """A client that cannot authenticate at all (no KDC, no NTLM fallback) fails typed, without leaking."""
    # With python-gssapi this is a Kerberos failure; without the extra it is the typed "Kerberos is not available"
    # error (KerberosUnavailableError). Either is a NegotiateError, and neither may show the password.
    _, evidence = _failure_without_a_kdc(caplog, protocol)
    assert evidence.texts


@requires_gssapi
@pytest.mark.parametrize("protocol", ["negotiate", "kerberos"])
def test_kerberos_failure_without_a_kdc_does_not_leak(caplog: pytest.LogCaptureFixture, protocol: str) -> None:
    """With python-gssapi, the failure really comes from Kerberos (no KDC for the realm) and leaks nothing."""
    error, _ = _failure_without_a_kdc(caplog, protocol)
    assert not isinstance(error, KerberosUnavailableError)


def test_credentials_and_user_file(users: NTLMUsers) -> None:
    """Credentials and NTLMUsers reprs hide the password; the acceptor file holds hashes and is owner-only."""
    credentials = users.client_credentials()
    assert credentials.password == PASSWORD
    assert users.password("alice") == PASSWORD
    assert "password" not in repr(credentials)
    creds = Credentials(username="alice", password=PASSWORD, domain="CORP")
    assert PASSWORD not in repr(creds) and PASSWORD not in str(creds)
    assert "alice" in repr(creds)
    assert PASSWORD not in repr(users)
    # The acceptor's file holds hashes, never the password, and only its owner may read it.
    with open(users.path, encoding="utf-8") as handle:
        content = handle.read()
    assert PASSWORD not in content
    assert _nt_hash(PASSWORD).upper() in content
    assert stat.S_IMODE(os.stat(users.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(users.path)).st_mode) & 0o077 == 0


def test_established_session_objects_do_not_show_keys(users: NTLMUsers) -> None:
    """After data and EOF, no object of the session shows the session key in its repr."""
    client, server = make(users)
    handshake(client, server)
    key = client.context._ctx.session_key
    server.receive_data(client.send(b"hello"))
    assert server.next_event() == Data(b"hello")
    server.receive_data(b"")
    assert server.next_event() == EndOfStream()
    assert server.next_event() is not NEED_DATA
    for obj in (client, server, client.info, server.info, client.context, server.context):
        for form in _forbidden_forms(key):
            assert form not in repr(obj)
