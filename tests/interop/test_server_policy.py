"""The acceptor's extended protection against real peers, over real TLS where the peer can bind to it.

``channel_binding_policy`` and ``allowed_spns`` for NTLM and Kerberos (MIT realm): our client against our server
inside TLS (an honest client, one that sends no bindings, one behind a TLS-terminating man in the middle); a
gss-ntlmssp client (python-gssapi) inside TLS; and the .NET client, whose NnsPeer speaks plain TCP, so it shows
what a client that cannot bind meets, and how .NET reads our refusals.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from negotiate_stream import (
    ChannelBindingError,
    Credentials,
    HandshakeError,
    NegotiateError,
    SecurityContext,
    ServiceNameError,
    channel_bindings,
)
from negotiate_stream.errors import ERROR_TRUST_FAILURE, SEC_E_BAD_BINDINGS
from tests.support.krb5_realm import Realm
from tests.support.tls import TLSChannel

from . import _driver
from .conftest import NTLM_DOMAIN, NTLM_PASSWORD, NTLM_USER, DotNetPeer, run_pair

pytestmark = pytest.mark.interop

gssapi = pytest.importorskip("gssapi", reason="interop peer missing: python-gssapi (run scripts/install-interop)")

HONEST, UNBOUND, MITM = "honest", "unbound", "mitm"
MITM_BINDINGS = b"tls-server-end-point:" + bytes(32)  # what a client sees behind another certificate
POLICIES = ["mechanism", "never", "when_supported", "always"]
# (mechanism, client) -> the policies that refuse it. MIT accepts an initiator without bindings unless "always".
REFUSED = {
    ("ntlm", HONEST): set(),
    ("ntlm", UNBOUND): {"mechanism", "always"},
    ("ntlm", MITM): {"mechanism", "when_supported", "always"},
    ("kerberos", HONEST): set(),
    ("kerberos", UNBOUND): {"always"},
    ("kerberos", MITM): {"mechanism", "when_supported", "always"},
}


@pytest.fixture(scope="module", autouse=True)
def realm(krb5_realm: Realm) -> Iterator[Realm]:
    """One MIT realm for the module; acceptors get their keytab explicitly."""
    yield krb5_realm


def client_options(realm: Realm, mechanism: str) -> dict[str, Any]:
    """Our client for ``mechanism``: the realm's ticket through SPNEGO, or raw NTLM with the realm user's password."""
    if mechanism == "kerberos":
        return {"credentials": Credentials(ccache=realm.ccache), "allow_ntlm_fallback": False}
    user, domain = realm.env["INTEROP_KRB5_USER"], realm.env["INTEROP_KRB5_DOMAIN"]
    return {"credentials": Credentials(username=user, domain=domain, password=realm.password), "protocol": "ntlm"}


def server_credentials(realm: Realm) -> Credentials:
    """Our acceptor: the realm's service keytab and its NTLM user file."""
    return Credentials(keytab=realm.keytab, ntlm_user_file=realm.env["NTLM_USER_FILE"])


def over_tls(
    tls: TLSChannel, client: dict[str, Any], server: dict[str, Any], view: str
) -> tuple[Any, Any, BaseException | None]:
    """Authenticate inside TLS, both ends deriving tls-server-end-point; the client sends ``view``'s bindings.

    Returns (our client peer or its NegotiateError, our server peer, the server's exception).
    """

    def serve(sock: socket.socket) -> _driver.BlockingPeer:
        conn = tls.server.wrap_socket(sock, server_side=True)
        bindings = channel_bindings.for_ssl_object(conn, server_certificate=tls.certificate)
        return _driver.BlockingPeer(conn, server_side=True, channel_bindings=bindings, **server)

    def connect(sock: socket.socket) -> _driver.BlockingPeer | NegotiateError:
        conn = tls.client.wrap_socket(sock)
        bindings = {HONEST: channel_bindings.for_ssl_object(conn), UNBOUND: None, MITM: MITM_BINDINGS}[view]
        try:
            return _driver.BlockingPeer(conn, server_side=False, channel_bindings=bindings, **client)
        except NegotiateError as exc:
            return exc

    return run_pair(connect, serve)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("view", [HONEST, UNBOUND, MITM])
@pytest.mark.parametrize("mechanism", ["ntlm", "kerberos"])
def test_our_client_inside_tls_each_policy(
    realm: Realm, tls_channel: TLSChannel, mechanism: str, view: str, policy: str
) -> None:
    """Each policy refuses exactly its cases with ChannelBindingError; the client reads SEC_E_BAD_BINDINGS."""
    server = {"credentials": server_credentials(realm), "channel_binding_policy": policy}
    client, server_peer, server_error = over_tls(tls_channel, client_options(realm, mechanism), server, view)
    if policy in REFUSED[(mechanism, view)]:
        assert isinstance(server_error, ChannelBindingError), server_error
        assert isinstance(client, HandshakeError) and client.status == SEC_E_BAD_BINDINGS
    else:
        assert server_error is None, server_error
        assert client.info.protocol == server_peer.info.protocol == mechanism


@pytest.mark.parametrize(("protocol", "policy"), [("kerberos", "always"), ("negotiate", "when_supported")])
def test_raw_kerberos_and_spnego_ntlm_inside_tls(
    realm: Realm, tls_channel: TLSChannel, protocol: str, policy: str
) -> None:
    """Raw Kerberos under "always" and NTLM inside SPNEGO under "when_supported": honest clients get in."""
    client = {**client_options(realm, "kerberos" if protocol == "kerberos" else "ntlm"), "protocol": protocol}
    server = {"credentials": server_credentials(realm), "channel_binding_policy": policy}
    peer, _, server_error = over_tls(tls_channel, client, server, HONEST)
    assert server_error is None and not isinstance(peer, NegotiateError)


# -- allowed service names, Kerberos ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "allowed", "accepted"),
    [
        ("HTTP/localhost", ["http/LOCALHOST"], True),
        ("HTTP/localhost", ["HTTP/localhost@INTEROP.TEST"], True),
        ("HTTP/localhost", ["HTTP/localhost@OTHER.TEST"], False),
        ("HTTP/localhost", ["host/localhost"], False),
        ("host/localhost", ["host/localhost", "HTTP/localhost"], True),
    ],
)
def test_kerberos_ticket_service_must_be_allowed(realm: Realm, target: str, allowed: list[str], accepted: bool) -> None:
    """The Kerberos ticket's service principal is checked against allowed_spns (one keytab holds both SPNs)."""
    client = {**client_options(realm, "kerberos"), "target": target}
    server = {"credentials": server_credentials(realm), "allowed_spns": allowed}

    def serve(sock: socket.socket) -> _driver.BlockingPeer:
        return _driver.BlockingPeer(sock, server_side=True, **server)

    def connect(sock: socket.socket) -> _driver.BlockingPeer | NegotiateError:
        try:
            return _driver.BlockingPeer(sock, server_side=False, **client)
        except NegotiateError as exc:
            return exc

    peer, _, server_error = run_pair(connect, serve)
    if accepted:
        assert server_error is None and not isinstance(peer, NegotiateError)
    else:
        assert isinstance(server_error, ServiceNameError) and server_error.status == ERROR_TRUST_FAILURE
        assert f"{target}@INTEROP.TEST" in str(server_error)
        assert isinstance(peer, HandshakeError) and peer.status == ERROR_TRUST_FAILURE


# -- gss-ntlmssp inside TLS ----------------------------------------------------------------------------------------

_LENGTH = struct.Struct(">I")
SEAL_FLAGS = (
    gssapi.RequirementFlag.integrity
    | gssapi.RequirementFlag.confidentiality
    | gssapi.RequirementFlag.replay_detection
    | gssapi.RequirementFlag.out_of_sequence_detection
)


def _send(sock: Any, token: bytes) -> None:
    sock.sendall(_LENGTH.pack(len(token)) + token)


def _recv(sock: Any) -> bytes:
    data = b""
    while len(data) < 4 or len(data) < 4 + _LENGTH.unpack(data[:4])[0]:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("peer closed")
        data += chunk
    return data[4:]


def gss_ntlmssp_over_tls(
    tls: TLSChannel, mech: Any, view: str, target: str = "host@localhost", **server: Any
) -> BaseException | None:
    """A gss-ntlmssp initiator (python-gssapi) authenticates inside TLS to our acceptor; return our acceptor's
    error. Tokens travel length-prefixed: the test is about what the tokens carry, not the stream framing."""

    def serve(sock: socket.socket) -> None:
        conn = tls.server.wrap_socket(sock, server_side=True)
        bindings = channel_bindings.for_ssl_object(conn, server_certificate=tls.certificate)
        context = SecurityContext.server(channel_bindings=bindings, **server)
        with conn:  # closed on a refusal too, so the client reads EOF at once (the TLS socket owns the descriptor)
            while not context.complete:
                _send(conn, context.step(_recv(conn)) or b"")

    def connect(sock: socket.socket) -> None:
        conn = tls.client.wrap_socket(sock)
        bindings = {HONEST: channel_bindings.for_ssl_object(conn), UNBOUND: None, MITM: MITM_BINDINGS}[view]
        user = gssapi.Name(f"{NTLM_DOMAIN}\\{NTLM_USER}", gssapi.NameType.user)
        creds = gssapi.raw.acquire_cred_with_password(user, NTLM_PASSWORD.encode(), usage="initiate", mechs=[mech])
        context = gssapi.SecurityContext(
            name=gssapi.Name(target, gssapi.NameType.hostbased_service),
            creds=gssapi.Credentials(creds.creds),
            mech=mech,
            usage="initiate",
            flags=SEAL_FLAGS,
            channel_bindings=gssapi.raw.ChannelBindings(application_data=bindings) if bindings else None,
        )
        token = context.step(None)
        while not context.complete:
            _send(conn, token)
            token = context.step(_recv(conn))
        _send(conn, token)
        with contextlib.suppress(EOFError, OSError):
            _recv(conn)  # our acceptor's last (empty) token, or EOF when it refused

    _, _, error = run_pair(connect, serve)
    return error


@pytest.fixture(scope="module")
def ntlm_mech(gss_ntlmssp: str) -> Any:
    """gss-ntlmssp's mechanism OID (its initiator needs no user file; our acceptor gets ``ntlm_user_file``)."""
    return gssapi.OID.from_int_seq(gss_ntlmssp)


@pytest.mark.parametrize(
    ("view", "policy", "refused"),
    [
        (HONEST, "always", False),
        (UNBOUND, "always", True),
        (UNBOUND, "when_supported", False),
        (UNBOUND, "mechanism", True),
        (MITM, "when_supported", True),
        (MITM, "never", False),
    ],
)
def test_gss_ntlmssp_client_inside_tls(
    tls_channel: TLSChannel, ntlm_mech: Any, ntlm_user_file: str, view: str, policy: str, refused: bool
) -> None:
    """gss-ntlmssp's MsvAvChannelBindings meet each policy as our own client's do."""
    error = gss_ntlmssp_over_tls(
        tls_channel,
        ntlm_mech,
        view,
        credentials=Credentials(ntlm_user_file=ntlm_user_file),
        channel_binding_policy=policy,
    )
    assert isinstance(error, ChannelBindingError) if refused else error is None, error


@pytest.mark.parametrize(("target", "refused"), [("host@localhost", False), ("HTTP@localhost", True)])
def test_gss_ntlmssp_target_name_checked(
    tls_channel: TLSChannel, ntlm_mech: Any, ntlm_user_file: str, target: str, refused: bool
) -> None:
    """gss-ntlmssp sends its target as MsvAvTargetName (service/host): allowed_spns accepts or refuses it."""
    error = gss_ntlmssp_over_tls(
        tls_channel,
        ntlm_mech,
        HONEST,
        target=target,
        credentials=Credentials(ntlm_user_file=ntlm_user_file),
        allowed_spns=["host/localhost"],
        channel_binding_policy="always",
    )
    assert isinstance(error, ServiceNameError) if refused else error is None, error


# -- the .NET client (plain TCP: it cannot bind to a channel) -------------------------------------------------------


def dotnet_against_our_server(
    dotnet: DotNetPeer, realm: Realm, ntlm_user_file: str, mechanism: str, target: str, **server: Any
) -> tuple[Any, int, str]:
    """Run the .NET client (NTLM or the realm's ticket) against our server; return (our outcome, its exit, its log)."""
    args = ["--target", target, "--send", "hello", "--echo"]
    if mechanism == "ntlm":
        args += ["--user", NTLM_USER, "--password", NTLM_PASSWORD, "--domain", NTLM_DOMAIN]
    credentials = Credentials(ntlm_user_file=ntlm_user_file, keytab=realm.keytab)
    with _driver.listener() as listening:
        client = dotnet.start_client(listening.getsockname()[1], *args)
        try:
            peer = _driver.accept(listening, credentials=credentials, **server)
            outcome: Any = peer.info
            peer.echo_until_eof()
            peer.close()
        except NegotiateError as exc:
            outcome = exc
        _, log = client.communicate(timeout=60)
    return outcome, client.returncode, log


@pytest.mark.parametrize(("policy", "refused"), [("when_supported", False), ("always", True)])
def test_dotnet_client_without_channel(
    dotnet: DotNetPeer, realm: Realm, ntlm_user_file: str, policy: str, refused: bool
) -> None:
    """A .NET client on plain TCP sends no bindings: "when_supported" lets it in, "always" refuses it (Error frame)."""
    # .NET's NnsPeer has no TLS, so the honest-bindings case of the .NET client is not covered here.
    outcome, status, log = dotnet_against_our_server(
        dotnet,
        realm,
        ntlm_user_file,
        "ntlm",
        "host/localhost",
        channel_bindings=MITM_BINDINGS,
        channel_binding_policy=policy,
    )
    if refused:
        assert isinstance(outcome, ChannelBindingError) and status == 1
        # .NET decoded our Error frame (an EOF would be an IOException); it prints no text for the code.
        assert "AuthenticationException: Authentication failed on the remote side" in log, log
    else:
        assert not isinstance(outcome, NegotiateError) and status == 0, log


@pytest.mark.parametrize("mechanism", ["ntlm", "kerberos"])
@pytest.mark.parametrize(("target", "refused"), [("host/localhost", False), ("HTTP/localhost", True)])
def test_dotnet_client_target_checked(
    dotnet: DotNetPeer, realm: Realm, ntlm_user_file: str, mechanism: str, target: str, refused: bool
) -> None:
    """The .NET client's target (NTLM or Kerberos) meets allowed_spns; a refusal reaches .NET as 1790."""
    outcome, status, log = dotnet_against_our_server(
        dotnet, realm, ntlm_user_file, mechanism, target, allowed_spns=["host/localhost"]
    )
    if refused:
        assert isinstance(outcome, ServiceNameError) and status == 1, log
        assert "1790" in log, log
    else:
        assert not isinstance(outcome, NegotiateError) and status == 0, log
        assert outcome.protocol == mechanism
