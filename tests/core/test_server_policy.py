"""The acceptor's extended protection over real pyspnego NTLM (channel-binding policy, allowed service names), the
NTLM AUTHENTICATE parser it reads, the impersonation level, and delegation refused on NTLM.

Kerberos (MIT) and real TLS are covered by tests/interop/test_server_policy.py and test_delegation.py.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import spnego
import spnego._ntlm
from spnego._ntlm_raw.messages import NegotiateFlags

from negotiate_stream import (
    AuthenticationError,
    ChannelBindingError,
    Credentials,
    NegotiateError,
    SecurityContext,
)
from negotiate_stream._spnego.acceptor import ntlm_authenticate_in, spn_allowed
from negotiate_stream._spnego.ntlm_authenticate import NTLM_AUTHENTICATE_PREFIX, parse_authenticate
from negotiate_stream.errors import ERROR_TRUST_FAILURE, SEC_E_BAD_BINDINGS, ServiceNameError
from negotiate_stream.testing import NTLMUsers, connection_pair, handshake, transfer
from tests.support.core import context_pair, refused_handshake

BINDINGS = b"tls-server-end-point:" + bytes(range(32))
OTHER = b"tls-server-end-point:" + bytes(range(1, 33))
ZEROS = "zeros"  # a client that sends the all-zero MsvAvChannelBindings ("no channel", as Windows without TLS)


@contextmanager
def zero_bindings_hash() -> Iterator[None]:
    """Make pyspnego's NTLM client put 16 zero bytes in MsvAvChannelBindings (what a Windows client without TLS
    sends), by replacing the MD5 its _ntlm module calls; only around client steps."""
    namespace = vars(spnego._ntlm)
    original = namespace["md5"]
    namespace["md5"] = lambda data: b"\x00" * 16
    try:
        yield
    finally:
        namespace["md5"] = original


def server_refusal(
    users: NTLMUsers, client_bindings: bytes | str | None, protocol: str = "ntlm", **server: Any
) -> NegotiateError | None:
    """Authenticate a client sending ``client_bindings`` to a server with ``server`` options; return the server's
    error, or None when both sides complete."""
    bindings = BINDINGS if client_bindings == ZEROS else client_bindings
    client_ctx, server_ctx = context_pair(
        users, protocol=protocol, client_options={"channel_bindings": bindings}, server_options=server
    )
    token = client_ctx.step(None)
    while token is not None:
        try:
            token = server_ctx.step(token)
        except NegotiateError as server_error:
            return server_error
        if token is not None:
            with zero_bindings_hash() if client_bindings == ZEROS else _nothing():
                token = client_ctx.step(token)
    assert client_ctx.complete and server_ctx.complete
    return None


@contextmanager
def _nothing() -> Iterator[None]:
    yield


# client bindings -> refused (True) or accepted, per policy, for a server given BINDINGS.
MATRIX = {
    None: {"mechanism": True, "never": False, "when_supported": False, "always": True},
    ZEROS: {"mechanism": False, "never": False, "when_supported": False, "always": True},
    BINDINGS: {"mechanism": False, "never": False, "when_supported": False, "always": False},
    OTHER: {"mechanism": True, "never": False, "when_supported": True, "always": True},
}


@pytest.mark.parametrize("protocol", ["ntlm", "negotiate"])
@pytest.mark.parametrize("policy", ["mechanism", "never", "when_supported", "always"])
@pytest.mark.parametrize("client_bindings", list(MATRIX), ids=["none", "zeros", "same", "other"])
def test_ntlm_channel_binding_policy_matrix(
    ntlm_users: NTLMUsers, protocol: str, policy: str, client_bindings: bytes | str | None
) -> None:
    """Each policy refuses exactly its cases with ChannelBindingError (SEC_E_BAD_BINDINGS), raw NTLM and SPNEGO."""
    server_error = server_refusal(
        ntlm_users, client_bindings, protocol, channel_bindings=BINDINGS, channel_binding_policy=policy
    )
    if MATRIX[client_bindings][policy]:
        assert isinstance(server_error, ChannelBindingError), server_error
        assert server_error.status == SEC_E_BAD_BINDINGS
    else:
        assert server_error is None


def test_default_policy_is_mechanism_and_keeps_todays_ntlm_rule(ntlm_users: NTLMUsers) -> None:
    """Without a policy the server behaves as "mechanism": a client without bindings is refused by NTLM."""
    assert isinstance(server_refusal(ntlm_users, None, channel_bindings=BINDINGS), ChannelBindingError)
    assert server_refusal(ntlm_users, BINDINGS, channel_bindings=BINDINGS) is None


@pytest.mark.parametrize("policy", ["mechanism", "never", "when_supported"])
def test_server_without_bindings_ignores_the_clients(ntlm_users: NTLMUsers, policy: str) -> None:
    """A server given no bindings accepts a client that sends some, under every policy that needs none."""
    assert server_refusal(ntlm_users, BINDINGS, channel_binding_policy=policy) is None


def test_refusal_sends_the_error_frame_to_the_client(ntlm_users: NTLMUsers) -> None:
    """Over Connections, a policy refusal raises at the server and the client reads SEC_E_BAD_BINDINGS from it."""
    client, server = connection_pair(
        ntlm_users,
        channel_bindings=BINDINGS,
        server_options={"channel_binding_policy": "always", "channel_bindings": BINDINGS},
        client_options={"channel_bindings": None},
    )
    refused_handshake(client, server, ChannelBindingError, SEC_E_BAD_BINDINGS)


# -- allowed service names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["mechanism", "when_supported", "always"])
def test_allowed_spn_accepts_the_listed_target_case_insensitively(ntlm_users: NTLMUsers, policy: str) -> None:
    """The client's MsvAvTargetName (host/localhost) matches HOST/LocalHost; data flows."""
    client, server = connection_pair(
        ntlm_users, server_options={"allowed_spns": ["HTTP/web", "HOST/LocalHost"], "channel_binding_policy": policy}
    )
    handshake(client, server)
    assert transfer(client, server, b"ok") == b"ok"


def test_unlisted_spn_is_refused_with_error_trust_failure(ntlm_users: NTLMUsers) -> None:
    """A target the server does not answer to: ServiceNameError (ERROR_TRUST_FAILURE), sent to the client."""
    client, server = connection_pair(
        ntlm_users, client_options={"target": "HTTP/elsewhere"}, server_options={"allowed_spns": ["host/localhost"]}
    )
    refused_handshake(client, server, ServiceNameError, ERROR_TRUST_FAILURE, match="HTTP/elsewhere")


def test_never_skips_the_spn_check(ntlm_users: NTLMUsers) -> None:
    """Under "never" the service names are not checked, as .NET's PolicyEnforcement.Never."""
    client, server = connection_pair(
        ntlm_users,
        client_options={"target": "HTTP/elsewhere"},
        server_options={"allowed_spns": ["host/localhost"], "channel_binding_policy": "never"},
    )
    handshake(client, server)


def anonymous_target_client(users: NTLMUsers) -> Any:
    """A pyspnego NTLM client with neither service nor host name: its MsvAvTargetName is empty."""
    credentials = users.client_credentials()
    no_name: Any = None  # typed str by pyspnego, which then leaves its SPN unset
    return spnego.client(
        credentials.principal, credentials.password, hostname=no_name, service=no_name, protocol="ntlm"
    )


@pytest.mark.parametrize(("policy", "refused"), [("when_supported", False), ("mechanism", False), ("always", True)])
def test_client_without_target_is_refused_only_under_always(ntlm_users: NTLMUsers, policy: Any, refused: bool) -> None:
    """No MsvAvTargetName: accepted under "when_supported" and "mechanism", ServiceNameError under "always"."""
    client = anonymous_target_client(ntlm_users)
    server = SecurityContext.server(
        credentials=ntlm_users.server_credentials(), allowed_spns=["host/localhost"], channel_binding_policy=policy
    )
    challenge = server.step(client.step(None))
    authenticate = client.step(challenge)
    if refused:
        with pytest.raises(ServiceNameError, match="did not say which service"):
            server.step(authenticate)
    else:
        server.step(authenticate)
        assert server.complete


@pytest.mark.parametrize(
    ("spn", "allowed", "expected"),
    [
        ("host/localhost", ["HOST/LOCALHOST"], True),
        ("HTTP/web.example.com@EXAMPLE.COM", ["http/web.example.com"], True),
        ("HTTP/web.example.com@EXAMPLE.COM", ["HTTP/web.example.com@example.com"], True),
        ("HTTP/web.example.com@EXAMPLE.COM", ["HTTP/web.example.com@OTHER.COM"], False),
        ("HTTP@web.example.com", ["HTTP/web.example.com"], True),
        ("HTTP/web.example.com:8080", ["HTTP/web.example.com"], False),
        ("HTTP/web", ["host/web", "cifs/web"], False),
        ("HTTP/web", [], False),
    ],
)
def test_spn_matching(spn: str, allowed: list[str], expected: bool) -> None:
    """Service names compare case-insensitively; an allowed name without a realm fits any realm; ports count."""
    assert spn_allowed(spn, allowed) is expected


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"channel_binding_policy": "sometimes"}, ValueError, "unknown channel_binding_policy"),
        ({"channel_binding_policy": "always"}, ValueError, "needs channel_bindings or allowed_spns"),
        ({"allowed_spns": "host/localhost"}, TypeError, "not one string"),
    ],
)
def test_invalid_policy_options(options: dict[str, Any], error: type[Exception], message: str) -> None:
    """A misspelt policy, "always" with nothing to enforce, and one SPN string instead of a list fail at creation."""
    with pytest.raises(error, match=message):
        SecurityContext.server(**options)


def test_policy_options_are_ignored_by_a_client(ntlm_users: NTLMUsers) -> None:
    """Server-only options given to both ends (one option set) do not change the client."""
    client, server = connection_pair(ntlm_users, channel_binding_policy="always", channel_bindings=BINDINGS)
    handshake(client, server)


# -- the NTLM AUTHENTICATE parser ------------------------------------------------------------------------------


def authenticate_token(users: NTLMUsers, **client: Any) -> bytes:
    """The AUTHENTICATE message of a real handshake of our client (raw NTLM) with ``client`` options."""
    client_ctx, server_ctx = context_pair(users, client_options=client)
    challenge = server_ctx.step(client_ctx.step(None))
    token = client_ctx.step(challenge)
    assert token is not None
    return token


def test_parser_reads_target_and_bindings_of_a_real_message(ntlm_users: NTLMUsers) -> None:
    """Our client's AUTHENTICATE: MsvAvTargetName is its target, MsvAvChannelBindings present only when given."""
    plain = parse_authenticate(authenticate_token(ntlm_users, target="HTTP/web.example.com"))
    assert plain.target_name == "HTTP/web.example.com"
    assert plain.channel_bindings is None and not plain.proves_channel and not plain.identify_only
    bound = parse_authenticate(authenticate_token(ntlm_users, channel_bindings=BINDINGS))
    assert bound.channel_bindings is not None and len(bound.channel_bindings) == 16 and bound.proves_channel


def test_zero_bindings_helper_really_sends_zeros(ntlm_users: NTLMUsers) -> None:
    """The matrix's "zeros" client puts the all-zero MsvAvChannelBindings on the wire (the helper works)."""
    with zero_bindings_hash():
        zeros = parse_authenticate(authenticate_token(ntlm_users, channel_bindings=BINDINGS))
    assert zeros.channel_bindings == bytes(16) and not zeros.proves_channel


def test_spnego_wrapped_authenticate_is_found(ntlm_users: NTLMUsers) -> None:
    """ntlm_authenticate_in finds the message inside a SPNEGO NegTokenResp, and nothing in other tokens."""
    client, server = context_pair(ntlm_users, protocol="negotiate")
    first = client.step(None)
    assert first is not None and ntlm_authenticate_in(first) is None  # NegTokenInit with the NEGOTIATE message
    token = client.step(server.step(first))
    assert token is not None and not token.startswith(b"NTLMSSP")
    inner = ntlm_authenticate_in(token)
    assert inner is not None and parse_authenticate(inner).target_name == "host/localhost"
    for other in (None, b"", b"\xa1\x03garbage", b"NTLMSSP\x00\x01\x00\x00\x00"):
        assert ntlm_authenticate_in(other) is None


def synthetic(nt_response: bytes, flags: int = 0) -> bytes:
    """A minimal AUTHENTICATE message whose NtChallengeResponse is ``nt_response`` (other fields empty)."""
    header = bytearray(NTLM_AUTHENTICATE_PREFIX + bytes(64 - len(NTLM_AUTHENTICATE_PREFIX)))
    struct.pack_into("<HHI", header, 20, len(nt_response), len(nt_response), 64)
    struct.pack_into("<I", header, 60, flags)
    return bytes(header) + nt_response


def av(av_id: int, value: bytes) -> bytes:
    """One AV_PAIR."""
    return struct.pack("<HH", av_id, len(value)) + value


V2_PREFIX = bytes(16) + b"\x01\x01" + bytes(26)  # NTProofStr + the NTLMv2 client challenge header
EOL = av(0, b"")


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"NTLMSSP\x00\x02\x00\x00\x00" + bytes(60), "not an NTLM AUTHENTICATE"),
        (NTLM_AUTHENTICATE_PREFIX + bytes(10), "not an NTLM AUTHENTICATE"),
        (synthetic(V2_PREFIX + av(9, b"h\x00"))[:-3], "past the end"),
        (synthetic(V2_PREFIX + av(9, b"h\x00")), "without MsvAvEOL"),
        (synthetic(V2_PREFIX + av(10, bytes(8)) + EOL), "not 16"),
        (synthetic(V2_PREFIX + av(9, b"\x00\xd8") + EOL), "not UTF-16LE"),
        (synthetic(V2_PREFIX + av(10, bytes(16)) + av(10, bytes(16)) + EOL), "more than once"),
        (synthetic(V2_PREFIX + struct.pack("<HH", 9, 200) + b"x"), "runs past the end"),
    ],
)
def test_parser_refuses_malformed_messages(message: bytes, error: str) -> None:
    """Every inconsistency is a ValueError naming it: the parser trusts no length or offset."""
    with pytest.raises(ValueError, match=error):
        parse_authenticate(message)


def test_parser_on_synthetic_messages() -> None:
    """NTLMv1 carries no AV pairs; zero bindings do not prove a channel; the IDENTIFY flag is read; EOL ends."""
    v1 = parse_authenticate(synthetic(bytes(24), flags=0x00100000))
    assert (v1.target_name, v1.channel_bindings, v1.identify_only) == (None, None, True)
    zeros = parse_authenticate(synthetic(V2_PREFIX + av(10, bytes(16)) + av(9, b"") + EOL + av(9, b"x\x00")))
    assert zeros.channel_bindings == bytes(16) and not zeros.proves_channel
    assert zeros.target_name is None  # empty target means none; pairs after MsvAvEOL are not read


# -- impersonation level and delegation ------------------------------------------------------------------------


def test_ntlm_session_reports_impersonation_and_no_delegated_credentials(ntlm_users: NTLMUsers) -> None:
    """A default NTLM session is "impersonation" on both sides, without delegated credentials."""
    client, server = connection_pair(ntlm_users, delegate=False)
    for info in handshake(client, server):
        assert info.impersonation_level == "impersonation"
        assert info.delegated_credentials is None


def test_identify_flag_reports_identification(ntlm_users: NTLMUsers) -> None:
    """A client that sets NTLMSSP_NEGOTIATE_IDENTIFY (.NET's Identification) is reported as "identification"."""
    client = anonymous_target_client(ntlm_users)
    client._context_req |= NegotiateFlags.identity  # what gss-ntlmssp sends for GSS_C_IDENTIFY_FLAG
    server = SecurityContext.server(credentials=ntlm_users.server_credentials())
    server.step(client.step(server.step(client.step(None))))
    assert server.complete and server.impersonation_level == "identification"


@pytest.mark.parametrize("protocol", ["ntlm", "negotiate"])
def test_delegation_with_ntlm_is_refused_before_credentials_are_sent(ntlm_users: NTLMUsers, protocol: Any) -> None:
    """delegate=True cannot be honoured by NTLM: the client refuses (ERROR_TRUST_FAILURE) before AUTHENTICATE."""
    client = SecurityContext.client(credentials=ntlm_users.client_credentials(), protocol=protocol, delegate=True)
    with pytest.raises(AuthenticationError, match="NTLM cannot delegate") as caught:
        client.step(None)
    assert caught.value.status == ERROR_TRUST_FAILURE


def test_delegate_is_ignored_by_a_server(ntlm_users: NTLMUsers) -> None:
    """delegate=True given to the server (one option set for both ends) changes nothing there."""
    server = SecurityContext.server(credentials=ntlm_users.server_credentials(), delegate=True)
    assert server.delegate is False
    client = SecurityContext.client(credentials=Credentials(username="alice", domain="X", password="p"))
    assert client.delegate is False
