"""Secrets hygiene (issue 8 item 7): passwords and session keys never reach logs, exception texts or reprs."""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
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
)
from negotiate_stream.testing import NTLMUsers, handshake

PASSWORD = "Kn0wn-Secret-Pa55word!"
WRONG_PASSWORD = "An0ther-Secret-Guess?"


@pytest.fixture
def users() -> Iterator[NTLMUsers]:
    with NTLMUsers({"carol": PASSWORD}) as accounts:
        yield accounts


class Evidence:
    """Everything an attacker with access to logs, error reports and debug output could see."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.session_keys: list[bytes] = []

    def exception(self, exc: BaseException) -> None:
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:  # the whole __cause__ / __context__ chain
            seen.add(id(current))
            self.texts += [str(current), repr(current), *map(str, current.args)]
            current = current.__cause__ or current.__context__

    def objects(self, *objects: object) -> None:
        for obj in objects:
            self.texts += [repr(obj), str(obj)]

    def key_of(self, conn: Connection) -> None:
        # Test-only peek at pyspnego's exported session key, to know what must never be shown.
        key = conn.context._ctx.session_key
        if key:
            self.session_keys.append(bytes(key))


def forbidden_forms(secret: bytes) -> list[str]:
    forms = [secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode(), repr(secret)[2:-1]]
    return [f for f in forms if len(f) >= 8]


def base64_blobs(text: str) -> Iterator[bytes]:
    for match in re.finditer(r"[A-Za-z0-9+/]{16,}={0,2}", text):
        try:
            yield base64.b64decode(match.group(0) + "=" * (-len(match.group(0)) % 4))
        except (binascii.Error, ValueError):
            continue


def assert_clean(evidence: Evidence, log_text: str) -> None:
    texts = [*evidence.texts, log_text]
    passwords = [PASSWORD, WRONG_PASSWORD]
    secret_bytes = [p.encode("utf-16-le") for p in passwords] + [p.encode() for p in passwords] + evidence.session_keys
    for text in texts:
        for password in passwords:
            assert password not in text
        for secret in secret_bytes:
            for form in forbidden_forms(secret):
                assert form not in text
        for blob in base64_blobs(text):  # logged tokens are base64: look inside them too
            for secret in secret_bytes:
                assert secret not in blob


def drive(client: Connection, server: Connection, evidence: Evidence) -> None:
    """Run the handshake, recording every exception; never raises."""
    try:
        handshake(client, server)
    except NegotiateError as exc:
        evidence.exception(exc)
        for conn in (client, server):
            frame = conn.data_to_send()
            peer = server if conn is client else client
            if frame:
                try:
                    peer.receive_data(frame)
                    peer.next_event()
                except NegotiateError as peer_exc:
                    evidence.exception(peer_exc)
    for conn in (client, server):
        for call in (conn.next_event, lambda conn=conn: conn.send(b"x")):
            try:
                call()
            except NegotiateError as exc:
                evidence.exception(exc)


def make(users: NTLMUsers, *, password: str = PASSWORD, **options: Any) -> tuple[Connection, Connection]:
    client_options = options.pop("client_options", {})
    server_options = options.pop("server_options", {})
    common = {"protocol": "ntlm", **options}
    client = Connection(
        SecurityContext.client(credentials=users.client_credentials(password=password), **{**common, **client_options})
    )
    server = Connection(SecurityContext.server(credentials=users.server_credentials(), **{**common, **server_options}))
    return client, server


SCENARIOS: dict[str, Callable[[NTLMUsers], tuple[Connection, Connection]]] = {
    "ntlm-sealed": make,
    "ntlm-signed": lambda u: make(u, protection_level="sign"),
    "ntlm-none": lambda u: make(u, protection_level="none"),
    "negotiate-sealed": lambda u: make(u, protocol="negotiate"),
    "negotiate-signed": lambda u: make(u, protocol="negotiate", protection_level="sign"),
    "wrong-password": lambda u: make(u, password=WRONG_PASSWORD),
    "wrong-password-negotiate": lambda u: make(u, password=WRONG_PASSWORD, protocol="negotiate"),
    "level-mismatch": lambda u: make(
        u, client_options={"protection_level": "sign"}, server_options={"protection_level": "encrypt_and_sign"}
    ),
    "mutual-auth-required": lambda u: make(u, client_options={"require_mutual_auth": True}),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_no_secret_in_logs_errors_or_reprs(users: NTLMUsers, caplog: pytest.LogCaptureFixture, scenario: str) -> None:
    caplog.set_level(logging.DEBUG)
    evidence = Evidence()
    client, server = SCENARIOS[scenario](users)
    drive(client, server, evidence)
    if client.info is not None and server.info is not None:
        evidence.key_of(client)
        evidence.key_of(server)
        assert evidence.session_keys and evidence.session_keys[0] == evidence.session_keys[1]
        # tamper after success too: the IntegrityError text must not leak anything either
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
    log_text = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert_clean(evidence, log_text)
    if scenario.startswith("wrong"):
        assert any("rejected" in text for text in evidence.texts)  # the failure was actually recorded


def test_scenarios_really_log_and_produce_session_keys(users: NTLMUsers, caplog: pytest.LogCaptureFixture) -> None:
    """Guard against a vacuous pass: DEBUG logging of tokens happens, and the session key is known and non-trivial."""
    caplog.set_level(logging.DEBUG)
    client, server = make(users)
    handshake(client, server)
    assert any("NTLM step" in r.getMessage() for r in caplog.records)
    key = client.context._ctx.session_key
    assert isinstance(key, bytes) and len(key) == 16
    assert key == server.context._ctx.session_key
    # the checker would catch the key and the password if they were present
    evidence = Evidence()
    evidence.session_keys.append(key)
    with pytest.raises(AssertionError):
        assert_clean(evidence, f"key={key.hex()}")
    with pytest.raises(AssertionError):
        assert_clean(Evidence(), base64.b64encode(b"xx" + PASSWORD.encode("utf-16-le")).decode())


def test_credentials_and_users_reprs(users: NTLMUsers) -> None:
    creds = Credentials(username="carol", password=PASSWORD, domain="CORP")
    assert PASSWORD not in repr(creds) and PASSWORD not in str(creds)
    assert "carol" in repr(creds)
    assert PASSWORD not in repr(users)
    assert users.password("carol") == PASSWORD
    with open(users.path, encoding="utf-8") as handle:
        assert PASSWORD not in handle.read()  # the acceptor file holds hashes, not the password
    assert oct(os.stat(users.path).st_mode & 0o777) == "0o600"


def test_context_creation_failures_do_not_leak(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    evidence = Evidence()
    for protocol in ("kerberos", "negotiate"):
        try:
            ctx = SecurityContext.client(
                credentials=Credentials(username="carol", password=PASSWORD, domain="NO-SUCH-REALM.INVALID"),
                protocol=protocol,  # type: ignore[arg-type]
                allow_ntlm_fallback=False,
            )
            ctx.step(None)
        except NegotiateError as exc:
            evidence.exception(exc)
        else:
            raise AssertionError(f"{protocol}: a client with no KDC and no NTLM fallback must fail")
    assert evidence.texts
    log_text = "\n".join(r.getMessage() for r in caplog.records)
    assert_clean(evidence, log_text)


def test_established_session_objects_do_not_show_keys(users: NTLMUsers) -> None:
    client, server = make(users)
    handshake(client, server)
    key = client.context._ctx.session_key
    wire = client.send(b"hello")
    server.receive_data(wire)
    assert server.next_event() == Data(b"hello")
    server.receive_data(b"")
    assert server.next_event() == EndOfStream()
    assert server.next_event() is not NEED_DATA
    for obj in (client, server, client.info, server.info, client.context, server.context):
        for form in forbidden_forms(key):
            assert form not in repr(obj)
