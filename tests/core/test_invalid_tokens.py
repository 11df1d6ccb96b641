"""Handshake tokens that are not Negotiate messages are reported as such, never as credentials or keytab problems.

pyspnego reads every token that is neither SPNEGO nor NTLM as a Kerberos token, so garbage fails wherever Kerberos
fails: without python-gssapi ("GSSAPIProxy requires the Python gssapi library"), or without a keytab ("Keytab
FILE:/etc/krb5.keytab is nonexistent or empty"). The translation at the pyspnego border
(:mod:`negotiate_stream._spnego.translate`) names the token instead: a :class:`MalformedTokenError`, which is both
an AuthenticationError (the handshake failed) and a FramingError (the peer's bytes are not the protocol), with
SEC_E_INVALID_TOKEN. Real contexts are driven here; the Kerberos failures a machine with python-gssapi would
raise are built as pyspnego builds them.
"""

from __future__ import annotations

import copy
import pickle
import random
from typing import Literal

import pytest
import spnego._gss  # tests may reach into pyspnego; the library does so only in negotiate_stream._spnego
import spnego.exceptions as spnego_errors

from negotiate_stream import (
    AuthenticationError,
    FramingError,
    KerberosUnavailableError,
    MalformedTokenError,
    RemoteProtocolError,
    SecurityContext,
)
from negotiate_stream._spnego.translate import handshake_error, token_kind
from negotiate_stream.errors import SEC_E_INVALID_TOKEN, SEC_E_LOGON_DENIED
from negotiate_stream.testing import NTLMUsers
from tests.support.core import context_pair

NOT_NEGOTIATE = "handshake token is not a SPNEGO, NTLM or Kerberos message"
# A GSS-API InitialContextToken naming the Kerberos OID 1.2.840.113554.1.2.2 (its body is junk: the framing is real).
KERBEROS_FRAMED = bytes.fromhex("6014" + "06092a864886f712010202" + "0100") + bytes(7)
# What MIT Kerberos says when the acceptor has no keytab; pyspnego wraps it while building its Kerberos context.
NO_KEYTAB = "Keytab FILE:/etc/krb5.keytab is nonexistent or empty"

GARBAGE = {
    "zeros-64": bytes(64),
    "random-64": random.Random(14).randbytes(64),
    "one-byte": b"\x00",
    "text": b"hello, is this the negotiate port?",
    "unknown-gss-oid": bytes.fromhex("6009" + "06032b0601" + "00000000"),  # InitialContextToken for OID 1.3.6.1
    "all-ff": b"\xff" * 300,
}


def assert_not_negotiate(error: BaseException, whose: str = "the client's") -> None:
    """``error`` says the token is no Negotiate message, typed and with SEC_E_INVALID_TOKEN, and nothing else."""
    assert isinstance(error, MalformedTokenError)
    assert isinstance(error, AuthenticationError) and isinstance(error, FramingError)
    assert isinstance(error, RemoteProtocolError)
    assert error.status == SEC_E_INVALID_TOKEN
    text = str(error)
    assert f"{whose} {NOT_NEGOTIATE}" in text
    assert text.endswith("[SEC_E_INVALID_TOKEN]")
    for misleading in ("keytab", "credentials", "gssapi", "password"):
        assert misleading not in text.lower()


@pytest.mark.parametrize("protocol", ["negotiate", "ntlm"])
@pytest.mark.parametrize("token", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_first_token_is_not_a_negotiate_message(
    ntlm_users: NTLMUsers, protocol: Literal["negotiate", "ntlm"], token: bytes
) -> None:
    """An acceptor fed garbage as the client's first token reports the token, whatever pyspnego tried with it."""
    server = SecurityContext.server(credentials=ntlm_users.server_credentials(), protocol=protocol)
    with pytest.raises(MalformedTokenError) as info:
        server.step(token)
    assert_not_negotiate(info.value)
    assert f"{len(token)} byte" in str(info.value)


@pytest.mark.parametrize("protocol", ["negotiate", "ntlm"])
def test_truncated_ntlm_negotiate_is_a_malformed_ntlm_message(
    ntlm_users: NTLMUsers, protocol: Literal["negotiate", "ntlm"]
) -> None:
    """The first 20 bytes of a real NTLM NEGOTIATE are an NTLM message, but a broken one."""
    client, _ = context_pair(ntlm_users)
    negotiate = client.step(None)
    assert negotiate is not None
    server = SecurityContext.server(credentials=ntlm_users.server_credentials(), protocol=protocol)
    with pytest.raises(MalformedTokenError, match="the client's NTLM token is malformed") as info:
        server.step(negotiate[:20])
    assert info.value.status == SEC_E_INVALID_TOKEN
    assert NOT_NEGOTIATE not in str(info.value)


def test_truncated_spnego_token_is_a_malformed_spnego_message(ntlm_users: NTLMUsers) -> None:
    """A NegTokenResp cut short is a SPNEGO message that pyspnego's parser cannot finish."""
    server = SecurityContext.server(credentials=ntlm_users.server_credentials(), protocol="negotiate")
    with pytest.raises(MalformedTokenError, match="the client's SPNEGO token is malformed") as info:
        server.step(b"\xa1\x03\x30\x01")
    assert info.value.status == SEC_E_INVALID_TOKEN


def test_garbage_from_the_server_names_the_server(ntlm_users: NTLMUsers) -> None:
    """An initiator fed garbage as the server's challenge reports the server's token."""
    client, _ = context_pair(ntlm_users)
    client.step(None)
    with pytest.raises(MalformedTokenError) as info:
        client.step(bytes(64))
    assert_not_negotiate(info.value, whose="the server's")


def test_wrong_password_is_still_rejected_credentials(ntlm_users: NTLMUsers) -> None:
    """A well-formed AUTHENTICATE computed with the wrong password is a credentials failure, not a bad token."""
    client, server = context_pair(
        ntlm_users, client_options={"credentials": ntlm_users.client_credentials(password="x")}
    )
    challenge = server.step(client.step(None))
    authenticate = client.step(challenge)
    assert authenticate is not None
    with pytest.raises(AuthenticationError) as info:
        server.step(authenticate)
    assert not isinstance(info.value, MalformedTokenError | FramingError)
    assert info.value.status == SEC_E_LOGON_DENIED


def test_real_kerberos_token_without_the_extra_names_the_missing_extra(
    ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Kerberos-framed first token on a machine without python-gssapi is Kerberos that cannot run here (the
    install advice), neither garbage nor rejected credentials."""
    monkeypatch.setattr(spnego._gss, "HAS_GSSAPI", False)  # what pyspnego records when `import gssapi` fails
    server = SecurityContext.server(credentials=ntlm_users.server_credentials(), protocol="negotiate")
    with pytest.raises(KerberosUnavailableError) as info:
        server.step(KERBEROS_FRAMED)
    assert "the peer offered only Kerberos" in str(info.value)
    assert not isinstance(info.value, MalformedTokenError)


# -- the Kerberos path of a machine with python-gssapi, as pyspnego raises it -----------------------------------------


@pytest.mark.parametrize(
    "pyspnego_error",
    [
        # No keytab: building the Kerberos acceptor fails inside SPNEGO's mechanism list (the report).
        lambda: spnego_errors.BadMechanismError(
            context_msg="Unable to negotiate common mechanism",
            base_error=spnego_errors.SpnegoError(
                spnego_errors.ErrorCode.failure, context_msg=f"Getting GSSAPI credential: {NO_KEYTAB}"
            ),
        ),
        # A keytab: MIT's gss_accept_sec_context answers GSS_S_DEFECTIVE_TOKEN, which pyspnego maps so.
        lambda: spnego_errors.InvalidTokenError(context_msg="Processing security token"),
        # MIT's catch-all GSS_S_FAILURE.
        lambda: spnego_errors.SpnegoError(spnego_errors.ErrorCode.failure, context_msg="Processing security token"),
    ],
    ids=["no-keytab", "defective-token", "gss-failure"],
)
def test_kerberos_failures_on_garbage_name_the_token(pyspnego_error: object) -> None:
    """Whatever the Kerberos acceptor raised for a token pyspnego took for Kerberos, garbage is named as garbage,
    while the same failure on a Kerberos-framed token keeps its own meaning. (The library reads the token off the
    traceback of pyspnego's step(); these errors were never raised, so they are handed the token.)"""
    assert callable(pyspnego_error)
    assert_not_negotiate(handshake_error(pyspnego_error(), True, token=bytes(64)))
    real = handshake_error(pyspnego_error(), True, token=KERBEROS_FRAMED)
    assert isinstance(real, AuthenticationError) and not isinstance(real, MalformedTokenError)


def test_no_keytab_for_a_real_kerberos_token_still_names_the_keytab() -> None:
    """For a genuine Kerberos token, the keytab is the right place to look: its message is kept."""
    error = spnego_errors.BadMechanismError(
        context_msg="Unable to negotiate common mechanism",
        base_error=spnego_errors.SpnegoError(spnego_errors.ErrorCode.failure, context_msg=NO_KEYTAB),
    )
    assert NO_KEYTAB in str(handshake_error(error, True, token=KERBEROS_FRAMED))


# -- the token classifier and the error type -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "kind"),
    [
        (b"NTLMSSP\x00\x01\x00\x00\x00", "NTLM"),
        (bytes.fromhex("6006" + "06062b0601050502"), "SPNEGO"),
        (bytes.fromhex("a1033001"), "SPNEGO"),
        (bytes.fromhex("a0023000"), "SPNEGO"),
        (KERBEROS_FRAMED, "Kerberos"),
        (bytes.fromhex("6081ff" + "06092a864882f712010202"), "Kerberos"),  # long-form length, Microsoft's OID
        (bytes.fromhex("6e0300"), "Kerberos"),  # a bare AP-REQ, as MIT accepts it
        (b"", None),
        (b"\x60", None),
        (b"NTLMSSP", None),
        *((token, None) for token in GARBAGE.values()),
    ],
)
def test_token_kind(token: bytes, kind: str | None) -> None:
    """The framing of each kind is recognised; anything else is none of them."""
    assert token_kind(token) == kind


@pytest.mark.parametrize(("protocol", "kind"), [("negotiate", "SPNEGO"), ("ntlm", "NTLM")])
def test_real_first_tokens_are_recognised(ntlm_users: NTLMUsers, protocol: str, kind: str) -> None:
    """The first token of a real initiator is classified as its protocol's message."""
    client, _ = context_pair(ntlm_users, protocol=protocol)
    token = client.step(None)
    assert token is not None and token_kind(token) == kind


def test_malformed_token_error_pickles_and_copies() -> None:
    """Like every library error, it survives pickling (process pools) and copying, status included."""
    error = MalformedTokenError(f"the client's {NOT_NEGOTIATE}")
    for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
        assert type(clone) is MalformedTokenError
        assert clone.status == SEC_E_INVALID_TOKEN
        assert str(clone) == str(error)


def test_random_garbage_is_never_blamed_on_credentials(ntlm_users: NTLMUsers) -> None:
    """Many random first tokens: each is reported as a MalformedTokenError naming the token."""
    rng = random.Random(18)
    for _ in range(50):
        token = rng.randbytes(rng.randrange(1, 200))
        if token_kind(token) is not None:
            continue
        server = SecurityContext.server(credentials=ntlm_users.server_credentials(), protocol="negotiate")
        with pytest.raises(MalformedTokenError) as info:
            server.step(token)
        assert_not_negotiate(info.value)
