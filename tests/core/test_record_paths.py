"""Which code protects a SecurityContext's records - the NTLM fast path or pyspnego - and that both agree.

A complete NTLM context with Extended Session Security moves its records from pyspnego to the library's own cipher
(:mod:`negotiate_stream._spnego.ntlm_takeover`); ``NEGOTIATE_STREAM_NTLM_FAST_PATH=0`` keeps pyspnego, and so does
anything the takeover does not cover. A context on one path must talk to a peer on the other (same bytes on the
wire), and the error behaviour a SecurityContext user sees must not depend on the path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.exceptions import UnsupportedAlgorithm

from negotiate_stream import IntegrityError, LocalProtocolError, ProtectionLevel, SecurityContext, _ntlm_records
from negotiate_stream._ntlm_records import arc4
from negotiate_stream._spnego import ntlm_takeover
from negotiate_stream._spnego.records import mechanism
from negotiate_stream.errors import SEC_E_MESSAGE_ALTERED
from negotiate_stream.testing import NTLMUsers
from tests.support.core import context_handshake, context_pair

SWITCH = "NEGOTIATE_STREAM_NTLM_FAST_PATH"
PROTOCOLS = ["ntlm", "negotiate"]
# (protection level, ntlm_seal_sign_only, id): the three NTLM record layouts.
LAYOUTS = [
    pytest.param("sign", False, id="sign-windows-layout"),
    pytest.param("sign", True, id="sign-sealed-layout"),
    pytest.param("encrypt_and_sign", False, id="sealed"),
]
MESSAGES = [b"", b"x", b"attack at dawn, " * 4, bytes(range(256)) * 20]


@pytest.fixture(autouse=True)
def _default_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from the default (fast path on), whatever the calling shell exported."""
    monkeypatch.delenv(SWITCH, raising=False)


@pytest.fixture(params=["fast", "pyspnego"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test on each record path, chosen through the documented switch."""
    if request.param == "pyspnego":
        monkeypatch.setenv(SWITCH, "0")
    yield request.param


def established(users: NTLMUsers, **options: Any) -> tuple[SecurityContext, SecurityContext]:
    """A client and server context after a completed handshake."""
    client, server = context_pair(users, **options)
    context_handshake(client, server)
    return client, server


def mixed_pair(
    users: NTLMUsers, monkeypatch: pytest.MonkeyPatch, *, client_fast: bool, server_fast: bool, **options: Any
) -> tuple[SecurityContext, SecurityContext]:
    """A handshaken pair whose two ends chose their record paths independently.

    The switch is read when a context completes, so it is set before each side's step to that side's choice.
    """
    client, server = context_pair(users, **options)

    def step(ctx: SecurityContext, token: bytes | None, fast: bool) -> bytes | None:
        monkeypatch.setenv(SWITCH, "1" if fast else "0")
        return ctx.step(token)

    token = step(client, None, client_fast)
    for _ in range(8):
        if token is not None:
            token = step(server, token, server_fast)
        if token is not None:
            token = step(client, token, client_fast)
        if client.complete and server.complete and token is None:
            break
    assert client.complete and server.complete
    assert client.record_path == ("fast" if client_fast else "pyspnego")
    assert server.record_path == ("fast" if server_fast else "pyspnego")
    return client, server


def exchange(client: SecurityContext, server: SecurityContext, seal_check: bool) -> None:
    """Records both ways, interleaved, each accepted by the other side; sealed records hide their plaintext."""
    for message in MESSAGES:
        for sender, receiver in ((client, server), (server, client), (client, server)):
            payload = sender.protect(message)
            assert len(payload) == 16 + len(message) and payload[:4] == b"\x01\x00\x00\x00"
            if seal_check and len(message) > 8:
                assert message not in payload
            assert receiver.unprotect(payload) == message


# --- which path -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("level", "seal_sign_only"), LAYOUTS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_default_ntlm_contexts_use_the_fast_path(
    ntlm_users: NTLMUsers, protocol: str, level: str, seal_sign_only: bool
) -> None:
    """Raw and SPNEGO NTLM at every layout use the fast path on both ends by default, and records flow."""
    client, server = context_pair(ntlm_users, protocol=protocol, protection_level=level)
    assert client.record_path == server.record_path == "none"  # before the handshake completes
    client, server = established(
        ntlm_users, protocol=protocol, protection_level=level, ntlm_seal_sign_only=seal_sign_only
    )
    assert client.record_path == server.record_path == "fast"
    exchange(client, server, seal_check=level != "sign" or seal_sign_only)


@pytest.mark.parametrize("value", ["0", "false", "OFF", " no "])
@pytest.mark.parametrize(("level", "seal_sign_only"), LAYOUTS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_switch_forces_pyspnego(
    ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch, protocol: str, level: str, seal_sign_only: bool, value: str
) -> None:
    """NEGOTIATE_STREAM_NTLM_FAST_PATH=0 (or false/off/no) keeps pyspnego on both ends; records still flow."""
    monkeypatch.setenv(SWITCH, value)
    client, server = established(
        ntlm_users, protocol=protocol, protection_level=level, ntlm_seal_sign_only=seal_sign_only
    )
    assert client.record_path == server.record_path == "pyspnego"
    exchange(client, server, seal_check=level != "sign" or seal_sign_only)


@pytest.mark.parametrize("value", ["1", "yes", ""])
def test_other_switch_values_keep_the_fast_path(
    ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """Only an explicit off value switches the fast path off."""
    monkeypatch.setenv(SWITCH, value)
    client, server = established(ntlm_users)
    assert client.record_path == server.record_path == "fast"


def test_level_none_has_no_record_path(ntlm_users: NTLMUsers) -> None:
    """At protection level none there are no records, so no path either; selecting none drops the path too."""
    client, server = established(ntlm_users, protection_level="none")
    assert client.record_path == server.record_path == "none"
    client, server = established(ntlm_users, server_options={"protection_level": "none"})
    before = server.record_path
    server.select_protection_level("none")
    assert (before, server.record_path) == ("fast", "none")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ntlm_without_ess_falls_back_to_pyspnego(
    ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    """NTLMv1 without Extended Session Security (one shared RC4 state) is not covered: pyspnego keeps the records."""
    monkeypatch.setenv("LM_COMPAT_LEVEL", "0")
    client, server = established(ntlm_users, protocol=protocol)
    assert client.shares_crypto_state and server.shares_crypto_state
    assert client.record_path == server.record_path == "pyspnego"
    for i in range(3):
        assert server.unprotect(client.protect(b"ping %d" % i)) == b"ping %d" % i
        assert client.unprotect(server.protect(b"pong %d" % i)) == b"pong %d" % i


# --- the two paths speak the same bytes -------------------------------------------------------------------------


@pytest.mark.parametrize("client_fast", [True, False], ids=["fast-client", "pyspnego-client"])
@pytest.mark.parametrize(("level", "seal_sign_only"), LAYOUTS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_fast_and_pyspnego_ends_interoperate(
    ntlm_users: NTLMUsers,
    monkeypatch: pytest.MonkeyPatch,
    protocol: str,
    level: str,
    seal_sign_only: bool,
    client_fast: bool,
) -> None:
    """A fast-path end and a pyspnego-path end accept each other's records both ways, in every layout."""
    client, server = mixed_pair(
        ntlm_users,
        monkeypatch,
        client_fast=client_fast,
        server_fast=not client_fast,
        protocol=protocol,
        protection_level=level,
        ntlm_seal_sign_only=seal_sign_only,
    )
    exchange(client, server, seal_check=level != "sign" or seal_sign_only)


@pytest.mark.parametrize("client_fast", [True, False], ids=["fast-client", "pyspnego-client"])
@pytest.mark.parametrize("level", ["sign", "encrypt_and_sign"])
def test_wrap_message_stays_in_step_with_records(
    ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch, level: str, client_fast: bool
) -> None:
    """wrap_message/unwrap_message share the records' sequence numbers and keystream on either path, mixed too."""
    client, server = mixed_pair(
        ntlm_users, monkeypatch, client_fast=client_fast, server_fast=not client_fast, protection_level=level
    )
    for i in range(3):
        layer = bytes([6, 0, 0x10, i])
        assert client.unwrap_message(server.wrap_message(layer)) == layer
        assert server.unprotect(client.protect(b"request %d" % i)) == b"request %d" % i
        assert server.unwrap_message(client.wrap_message(layer, encrypt=True)) == layer
        assert client.unprotect(server.protect(b"reply %d" % i)) == b"reply %d" % i


def test_taken_over_context_cannot_reuse_keystream_through_pyspnego(ntlm_users: NTLMUsers) -> None:
    """After the takeover pyspnego's own record functions refuse, rather than reuse RC4 keystream we already used."""
    client, _server = established(ntlm_users)
    inner = mechanism(client._ctx)
    with pytest.raises(Exception, match="until context has been established"):
        inner.wrap(b"must not be sealed with a used keystream")
    with pytest.raises(Exception, match="until context has been established"):
        inner.sign(b"nor signed")


# --- refused takeovers fall back, and pyspnego's context is intact ----------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unreadable_private_state_falls_back(
    ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    """A pyspnego whose counters are not where the reader looks (another version) keeps its own records."""
    monkeypatch.setattr(ntlm_takeover, "_SEQ_OUT", "_NTLMProxy__renamed_seq_num_out")
    client, server = established(ntlm_users, protocol=protocol)
    assert client.record_path == server.record_path == "pyspnego"
    exchange(client, server, seal_check=True)


def test_a_cryptography_refusing_hmac_md5_falls_back(ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cryptography that refuses HMAC-MD5 leaves the records to pyspnego (whose HMAC is hashlib's), in step,
    instead of failing the handshake. (Without ARC4 pyspnego itself could not do NTLM: that case cannot arise.)"""

    def refuse(*args: object, **kwargs: object) -> None:
        raise UnsupportedAlgorithm("HMAC-MD5 is not available in this OpenSSL")

    monkeypatch.setattr(_ntlm_records, "HMAC", refuse)
    client, server = established(ntlm_users, protocol="ntlm")
    assert client.record_path == server.record_path == "pyspnego"
    exchange(client, server, seal_check=True)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unlocatable_keystream_falls_back_with_pyspnego_in_step(
    ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    """A keystream position that cannot be found refuses the takeover after probing; the probes are given back."""
    monkeypatch.setattr(ntlm_takeover, "arc4", lambda key, skip=0: arc4(b"not the seal key", skip))
    client, server = established(ntlm_users, protocol=protocol)
    assert client.record_path == server.record_path == "pyspnego"
    exchange(client, server, seal_check=True)
    assert client.unwrap_message(server.wrap_message(b"\x06\xff\xff\xff")) == b"\x06\xff\xff\xff"


# --- the same behaviour on both paths ---------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["sign", "encrypt_and_sign"])
def test_rejected_record_then_sticky_refusal_on_either_path(ntlm_users: NTLMUsers, path: str, level: str) -> None:
    """First a tampered record's IntegrityError, then "already rejected" IntegrityErrors; sending still works."""
    client, server = established(ntlm_users, protection_level=level)
    assert server.record_path == path
    record = bytearray(client.protect(b"transfer 100 EUR"))
    record[-1] ^= 0x01
    with pytest.raises(IntegrityError, match="integrity check") as first:
        server.unprotect(bytes(record))
    assert first.value.status == SEC_E_MESSAGE_ALTERED
    for _ in range(2):
        with pytest.raises(IntegrityError, match="already rejected a record") as later:
            server.unprotect(client.protect(b"valid, but too late"))
        assert later.value.status == SEC_E_MESSAGE_ALTERED
    # The outgoing direction has its own keys and counter: the peer still accepts what this side sends.
    assert client.unprotect(server.protect(b"still sending")) == b"still sending"


@pytest.mark.parametrize("level", ["sign", "encrypt_and_sign"])
def test_failed_unwrap_message_then_records_fail_with_integrity_error(
    ntlm_users: NTLMUsers, path: str, level: str
) -> None:
    """After a wrapped message fails, the next record is an IntegrityError on either path (never another type)."""
    client, server = established(ntlm_users, protection_level=level)
    assert client.record_path == path
    bad = bytearray(server.wrap_message(b"\x02\x00\x10\x00"))
    bad[-1] ^= 0x80
    with pytest.raises(IntegrityError):
        client.unwrap_message(bytes(bad))
    with pytest.raises(IntegrityError) as info:
        client.unprotect(server.protect(b"after the bad message"))
    assert info.value.status == SEC_E_MESSAGE_ALTERED
    with pytest.raises(IntegrityError, match="already rejected a record"):
        client.unprotect(server.protect(b"and after that"))


@pytest.mark.parametrize("level", ["sign", "encrypt_and_sign"])
@pytest.mark.parametrize("record", [b"", b"\x01" * 15], ids=["0", "15"])
def test_short_records_on_either_path(ntlm_users: NTLMUsers, path: str, level: str, record: bytes) -> None:
    """A record shorter than its 16-byte signature is an IntegrityError; sign-only names the 16 bytes."""
    _client, server = established(ntlm_users, protection_level=level)
    assert server.record_path == path
    with pytest.raises(IntegrityError, match="16-byte" if level == "sign" else None) as info:
        server.unprotect(record)
    assert info.value.status == SEC_E_MESSAGE_ALTERED


@pytest.mark.parametrize(("level", "seal_sign_only"), LAYOUTS)
def test_buffers_are_read_in_place_on_either_path(
    ntlm_users: NTLMUsers, path: str, level: str, seal_sign_only: bool
) -> None:
    """memoryview slices of reused buffers go in; bytes that never refer to the caller's buffer come out."""
    client, server = established(ntlm_users, protection_level=level, ntlm_seal_sign_only=seal_sign_only)
    assert client.record_path == path
    send_buffer = bytearray(b"--plaintext in a larger buffer--")
    payload = client.protect(memoryview(send_buffer)[2:-2])
    assert type(payload) is bytes
    receive_buffer = bytearray(b"##" + payload + b"##")
    with memoryview(receive_buffer) as view:
        plaintext = server.unprotect(view[2:-2])
    receive_buffer[:] = bytes(len(receive_buffer))  # the buffer is reused: the result must not change
    assert type(plaintext) is bytes and plaintext == b"plaintext in a larger buffer"


@pytest.mark.parametrize(("level", "seal_sign_only"), LAYOUTS)
def test_protect_parts_join_to_the_record_on_either_path(
    ntlm_users: NTLMUsers, path: str, level: str, seal_sign_only: bool
) -> None:
    """protect_parts() and protect() take turns on one context: every (prefix + body) is the next valid record."""
    client, server = established(ntlm_users, protection_level=level, ntlm_seal_sign_only=seal_sign_only)
    for index, message in enumerate(MESSAGES[1:] * 2):
        if index % 2:
            payload = client.protect(message)
        else:
            prefix, body = client.protect_parts(memoryview(message))
            payload = prefix + body
            if level == "sign" and not seal_sign_only:  # the Windows sign layout: the body is the plaintext itself
                assert bytes(body) == message and len(prefix) == 16
        assert server.unprotect(payload) == message


def test_record_path_before_and_without_records(ntlm_users: NTLMUsers) -> None:
    """Before completion the path is none and protecting is still refused as before."""
    client, _server = context_pair(ntlm_users)
    assert client.record_path == "none"
    with pytest.raises(LocalProtocolError, match="not established"):
        client.protect(b"x")
    client, _server = established(ntlm_users)
    assert client.protection_level is ProtectionLevel.ENCRYPT_AND_SIGN and client.record_path == "fast"
