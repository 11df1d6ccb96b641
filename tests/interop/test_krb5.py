"""MIT Kerberos realm: our client <-> our server over loopback sockets, and SASL GSSAPI against python-gssapi.

Covers the ``kerberos`` extra: client credentials from a password, a ticket cache or a client keytab; acceptor
credentials from a keytab (``Credentials(keytab=...)`` or ``KRB5_KTNAME``); SPN handling; mutual authentication;
SPNEGO preferring Kerberos, falling back to NTLM, and refusing NTLM when asked; channel bindings. Then the RFC 4752
security-layer negotiation with python-gssapi used directly as the peer.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes

from negotiate_stream import (
    NEED_DATA,
    AuthenticationError,
    ChannelBindingError,
    Connection,
    Credentials,
    Data,
    HandshakeComplete,
    HandshakeError,
    IntegrityError,
    NegotiateError,
    ProtectionLevelError,
    SecurityContext,
    channel_bindings,
    sasl_gssapi,
)
from negotiate_stream.errors import SEC_E_BAD_BINDINGS
from negotiate_stream.sasl_gssapi import SecurityLayer
from tests.support.krb5_realm import Realm
from tests.support.tls import self_signed_channel

from . import _driver
from .conftest import run_pair

pytestmark = pytest.mark.interop

gssapi = pytest.importorskip("gssapi", reason="interop peer missing: python-gssapi (run scripts/install-interop)")


@pytest.fixture(scope="module", autouse=True)
def realm(krb5_realm: Realm) -> Iterator[Realm]:
    """One MIT realm for the whole module; ``KRB5_KTNAME`` points to a missing file so acceptors must be given
    their keytab explicitly, unless a test restores it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KRB5_KTNAME", "FILE:/nonexistent/keytab")
        yield krb5_realm


def nns_pair(
    client_options: dict[str, Any], server_options: dict[str, Any], payload: bytes = b"ping"
) -> tuple[_driver.BlockingPeer, _driver.BlockingPeer]:
    """Authenticate over a socket pair, echo ``payload`` through the server; return both (closed) peers."""

    def server(sock: socket.socket) -> _driver.BlockingPeer:
        peer = _driver.BlockingPeer(sock, server_side=True, **server_options)
        peer.sendall(peer.recv_exactly(len(payload)))
        return peer

    def client(sock: socket.socket) -> _driver.BlockingPeer:
        peer = _driver.BlockingPeer(sock, server_side=False, **client_options)
        peer.sendall(payload)
        assert peer.recv_exactly(len(payload)) == payload
        return peer

    client_peer, server_peer, error = run_pair(client, server)
    if error is not None:
        raise error
    return client_peer, server_peer


def keytab_server(realm: Realm, **extra: Any) -> dict[str, Any]:
    return {"credentials": Credentials(keytab=realm.keytab), **extra}


# -- Kerberos between our client and our server ----------------------------------------------------------------


@pytest.mark.parametrize("level", ["encrypt_and_sign", "sign", "none"])
def test_kerberos_ccache_to_keytab_each_level(realm: Realm, level: str) -> None:
    """A ccache client and keytab acceptor mutually authenticate and echo at each level (MIT seals Sign)."""
    client, server = nns_pair(
        {"credentials": Credentials(ccache=realm.ccache), "protection_level": level, "require_mutual_auth": True},
        keytab_server(realm, protection_level=level),
        payload=os.urandom(200_000),
    )
    assert client.info.protocol == server.info.protocol == "kerberos"
    assert client.info.mutually_authenticated and server.info.mutually_authenticated
    assert server.info.peer_identity == realm.principal
    assert client.info.peer_identity == "host/localhost"
    # MIT Kerberos always grants confidentiality once integrity is asked for: "sign" comes out sealed.
    expected = "encrypt_and_sign" if level != "none" else "none"
    assert client.info.protection_level.value == server.info.protection_level.value == expected


def test_kerberos_password_credentials(realm: Realm) -> None:
    """A client with only a principal and password gets a Kerberos ticket; the server sees that principal."""
    client, server = nns_pair(
        {"credentials": Credentials(username=realm.principal, password=realm.password), "protocol": "kerberos"},
        keytab_server(realm, protocol="kerberos"),
    )
    assert (client.info.protocol, server.info.peer_identity) == ("kerberos", realm.principal)


def test_kerberos_user_name_with_domain_field(realm: Realm) -> None:
    """``username`` + ``domain`` (the realm) is the same principal as ``user@REALM``."""
    credentials = Credentials(
        username=realm.env["INTEROP_KRB5_USER"], domain=realm.env["INTEROP_KRB5_REALM"], password=realm.password
    )
    for protocol in ("kerberos", "negotiate"):
        client, server = nns_pair(
            {"credentials": credentials, "allow_ntlm_fallback": False, "protocol": protocol}, keytab_server(realm)
        )
        assert (client.info.protocol, server.info.peer_identity) == ("kerberos", realm.principal)


def test_kerberos_client_keytab(realm: Realm) -> None:
    """A client authenticates with Kerberos from a client keytab; the server sees its principal."""
    client_keytab = realm.env["KRB5_CLIENT_KTNAME"]
    _client, server = nns_pair(
        {"credentials": Credentials(username=realm.principal, keytab=client_keytab), "protocol": "kerberos"},
        keytab_server(realm, protocol="kerberos"),
    )
    assert server.info.peer_identity == realm.principal


def test_acceptor_keytab_from_environment(realm: Realm, monkeypatch: pytest.MonkeyPatch) -> None:
    """An acceptor given no credentials finds its keytab through KRB5_KTNAME and accepts Kerberos."""
    monkeypatch.setenv("KRB5_KTNAME", realm.env["KRB5_KTNAME"])
    _client, server = nns_pair({"credentials": Credentials(ccache=realm.ccache)}, {})
    assert server.info.protocol == "kerberos"


def test_acceptor_without_keytab_fails_at_creation(realm: Realm) -> None:
    """No keytab at all (KRB5_KTNAME points nowhere): a Kerberos acceptor fails at once, with a typed error."""
    with pytest.raises(AuthenticationError, match="cannot create the kerberos acceptor"):
        SecurityContext.server(protocol="kerberos")


@pytest.mark.parametrize("target", ["HTTP/localhost", "host/localhost", "localhost"])
def test_spn_forms(realm: Realm, target: str) -> None:
    """``service/host`` names the service; a bare host name means ``host/<name>``."""
    client, _server = nns_pair(
        {"credentials": Credentials(ccache=realm.ccache), "target": target, "allow_ntlm_fallback": False},
        keytab_server(realm),
    )
    assert client.info.protocol == "kerberos"
    assert client.info.peer_identity == target


def test_unknown_spn_without_fallback_is_refused_before_credentials_are_sent(realm: Realm) -> None:
    """The password would serve NTLM too, but the NEGOTIATE message (no credentials in it) is never sent."""
    credentials = Credentials(username=realm.principal, password=realm.password)
    with pytest.raises(AuthenticationError, match="NTLM fallback is disabled"):
        SecurityContext.client(target="cifs/nowhere.example", credentials=credentials, allow_ntlm_fallback=False).step(
            None
        )
    # The same credentials with fallback allowed do go to NTLM:
    context = SecurityContext.client(target="cifs/nowhere.example", credentials=credentials)
    context.step(None)
    assert context.negotiated_protocol == "ntlm"


def test_unknown_spn_kerberos_only_fails_with_typed_error(realm: Realm) -> None:
    """A Kerberos-only client for an SPN unknown to the KDC fails with SEC_E_TARGET_UNKNOWN."""
    with pytest.raises(AuthenticationError, match="does not know the target service principal") as caught:
        SecurityContext.client(
            target="cifs/nowhere.example", credentials=Credentials(ccache=realm.ccache), protocol="kerberos"
        ).step(None)
    assert caught.value.status == 0x80090303  # SEC_E_TARGET_UNKNOWN


def test_unreachable_kdc_is_reported_as_such(realm: Realm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unreachable KDC fails the client with a KDC message and SEC_E_NO_AUTHENTICATING_AUTHORITY."""
    config = tmp_path / "krb5.conf"
    config.write_text(
        "[libdefaults]\n default_realm = NOWHERE.TEST\n dns_lookup_kdc = false\n"
        "[realms]\n NOWHERE.TEST = {\n  kdc = 127.0.0.1:1\n }\n"
    )
    monkeypatch.setenv("KRB5_CONFIG", str(config))
    with pytest.raises(AuthenticationError, match="KDC") as caught:
        SecurityContext.client(
            credentials=Credentials(username="alice@NOWHERE.TEST", password="x"), protocol="kerberos"
        ).step(None)
    assert caught.value.status == 0x80090311  # SEC_E_NO_AUTHENTICATING_AUTHORITY


def test_spnego_falls_back_to_ntlm_and_reports_it(realm: Realm) -> None:
    """SPNEGO falls back to NTLM (reported, not mutual) for a password user, yet prefers Kerberos with a ticket."""
    ntlm_user = Credentials(
        username=realm.env["INTEROP_KRB5_USER"], domain=realm.env["INTEROP_KRB5_DOMAIN"], password=realm.password
    )
    server_credentials = Credentials(keytab=realm.keytab, ntlm_user_file=realm.env["NTLM_USER_FILE"])
    client, server = nns_pair({"credentials": ntlm_user}, {"credentials": server_credentials})
    assert client.info.protocol == server.info.protocol == "ntlm"
    assert not client.info.mutually_authenticated
    # ... and the same acceptor takes Kerberos from a ticket holder: SPNEGO prefers it.
    client, server = nns_pair({"credentials": Credentials(ccache=realm.ccache)}, {"credentials": server_credentials})
    assert client.info.protocol == server.info.protocol == "kerberos"


def test_server_refuses_ntlm_when_fallback_disabled(realm: Realm) -> None:
    """An acceptor with allow_ntlm_fallback=False refuses an NTLM client with an AuthenticationError."""
    ntlm_user = Credentials(
        username=realm.env["INTEROP_KRB5_USER"], domain=realm.env["INTEROP_KRB5_DOMAIN"], password=realm.password
    )
    server_credentials = Credentials(keytab=realm.keytab, ntlm_user_file=realm.env["NTLM_USER_FILE"])

    def server(sock: socket.socket) -> None:
        _driver.BlockingPeer(sock, server_side=True, credentials=server_credentials, allow_ntlm_fallback=False)

    def client(sock: socket.socket) -> None:
        _driver.BlockingPeer(sock, server_side=False, credentials=ntlm_user)

    with pytest.raises(AuthenticationError):  # the client gets the server's Error frame (HandshakeError)
        run_pair(client, server)


def test_require_mutual_auth_fails_on_ntlm(realm: Realm) -> None:
    """require_mutual_auth=True fails the handshake when only NTLM, which cannot authenticate the server, is used."""
    ntlm_user = Credentials(
        username=realm.env["INTEROP_KRB5_USER"], domain=realm.env["INTEROP_KRB5_DOMAIN"], password=realm.password
    )
    server_credentials = Credentials(ntlm_user_file=realm.env["NTLM_USER_FILE"])
    with pytest.raises(AuthenticationError, match="mutual authentication was required"):
        nns_pair({"credentials": ntlm_user, "require_mutual_auth": True}, {"credentials": server_credentials})


def test_wrong_kerberos_password_is_an_authentication_error(realm: Realm) -> None:
    """A wrong Kerberos password fails the client's first step with an AuthenticationError."""
    with pytest.raises(AuthenticationError):
        SecurityContext.client(
            credentials=Credentials(username=realm.principal, password="wrong"), protocol="kerberos"
        ).step(None)


# -- channel bindings -----------------------------------------------------------------------------------------

BINDINGS = b"tls-server-end-point:" + bytes(range(32))
OTHER_BINDINGS = b"tls-server-end-point:" + bytes(range(1, 33))


@pytest.mark.parametrize("protocol", ["kerberos", "negotiate"])
def test_kerberos_channel_bindings_match(realm: Realm, protocol: str) -> None:
    """Matching channel bindings let Kerberos complete, directly and through SPNEGO."""
    client, _ = nns_pair(
        {"credentials": Credentials(ccache=realm.ccache), "channel_bindings": BINDINGS, "protocol": protocol},
        keytab_server(realm, channel_bindings=BINDINGS, protocol=protocol),
    )
    assert client.info.protocol == "kerberos"


def handshake_errors(
    client_options: dict[str, Any], server_options: dict[str, Any]
) -> tuple[BaseException | None, BaseException | None]:
    """Run a handshake expected to fail; return (the client's exception, the server's exception)."""
    caught: dict[str, BaseException | None] = {"client": None}

    def client(sock: socket.socket) -> None:
        try:
            _driver.BlockingPeer(sock, server_side=False, **client_options)
        except NegotiateError as exc:
            caught["client"] = exc

    def server(sock: socket.socket) -> None:
        _driver.BlockingPeer(sock, server_side=True, **server_options)

    _, _, server_error = run_pair(client, server)
    return caught["client"], server_error


@pytest.mark.parametrize("protocol", ["kerberos", "negotiate"])
def test_kerberos_channel_bindings_mismatch(realm: Realm, protocol: str) -> None:
    """Kerberos bindings mismatch: our acceptor raises ChannelBindingError, the client gets SEC_E_BAD_BINDINGS."""
    client_error, server_error = handshake_errors(
        {"credentials": Credentials(ccache=realm.ccache), "channel_bindings": BINDINGS, "protocol": protocol},
        keytab_server(realm, channel_bindings=OTHER_BINDINGS, protocol=protocol),
    )
    assert isinstance(server_error, ChannelBindingError)
    # Our server's Error frame told the client why.
    assert isinstance(client_error, HandshakeError) and client_error.status == SEC_E_BAD_BINDINGS


@pytest.mark.parametrize("client_bindings", [BINDINGS, OTHER_BINDINGS], ids=["match", "mismatch"])
def test_ntlm_channel_bindings(realm: Realm, client_bindings: bytes) -> None:
    """NTLM completes with matching bindings; a mismatch gives ChannelBindingError and SEC_E_BAD_BINDINGS."""
    ntlm_user = Credentials(
        username=realm.env["INTEROP_KRB5_USER"], domain=realm.env["INTEROP_KRB5_DOMAIN"], password=realm.password
    )
    server_options = {
        "credentials": Credentials(ntlm_user_file=realm.env["NTLM_USER_FILE"]),
        "channel_bindings": BINDINGS,
    }
    client_options = {"credentials": ntlm_user, "channel_bindings": client_bindings, "protocol": "ntlm"}
    if client_bindings == BINDINGS:
        client, _ = nns_pair(client_options, server_options)
        assert client.info.protocol == "ntlm"
    else:
        client_error, server_error = handshake_errors(client_options, server_options)
        assert isinstance(server_error, ChannelBindingError)
        assert isinstance(client_error, HandshakeError) and client_error.status == SEC_E_BAD_BINDINGS


def test_kerberos_acceptor_without_bindings_accepts_client_bindings(realm: Realm) -> None:
    """MIT (RFC 4121 4.1.1.2): an acceptor that passes no bindings ignores the initiator's."""
    client, _ = nns_pair(
        {"credentials": Credentials(ccache=realm.ccache), "channel_bindings": BINDINGS}, keytab_server(realm)
    )
    assert client.info.protocol == "kerberos"


def test_bindings_required_only_by_ntlm_acceptor_when_client_sends_none(realm: Realm) -> None:
    """A client that sends no bindings: pyspnego's NTLM acceptor refuses it, MIT's Kerberos acceptor lets it in
    (MIT only checks bindings the initiator sent). Evidence for the README's channel-binding caveat."""
    ntlm_user = Credentials(
        username=realm.env["INTEROP_KRB5_USER"], domain=realm.env["INTEROP_KRB5_DOMAIN"], password=realm.password
    )
    server_credentials = Credentials(keytab=realm.keytab, ntlm_user_file=realm.env["NTLM_USER_FILE"])
    _, server_error = handshake_errors(
        {"credentials": ntlm_user, "protocol": "ntlm"},
        {"credentials": server_credentials, "channel_bindings": BINDINGS},
    )
    assert isinstance(server_error, ChannelBindingError)
    client, _ = nns_pair(
        {"credentials": Credentials(ccache=realm.ccache)},
        {"credentials": server_credentials, "channel_bindings": BINDINGS},
    )
    assert client.info.protocol == "kerberos"


@pytest.mark.parametrize("protocol", ["kerberos", "ntlm"])
def test_channel_bindings_over_real_tls(realm: Realm, protocol: str) -> None:
    """Negotiate inside TLS: both sides derive tls-server-end-point from the certificate; a client that sees
    another certificate (a TLS-terminating man in the middle) is refused with ChannelBindingError."""
    channel = self_signed_channel(signature_hash=hashes.SHA384())  # the bindings must follow the signature hash
    if protocol == "kerberos":
        client_credentials = Credentials(ccache=realm.ccache)
    else:
        client_credentials = Credentials(
            username=realm.env["INTEROP_KRB5_USER"], domain=realm.env["INTEROP_KRB5_DOMAIN"], password=realm.password
        )
    server_credentials = Credentials(keytab=realm.keytab, ntlm_user_file=realm.env["NTLM_USER_FILE"])

    for client_view in (None, b"tls-server-end-point:" + bytes(32)):  # honest client, then one behind a MITM

        def server(sock: socket.socket) -> _driver.BlockingPeer:
            tls = channel.server.wrap_socket(sock, server_side=True)
            bindings = channel_bindings.for_ssl_object(tls, server_certificate=channel.certificate)
            return _driver.BlockingPeer(
                tls, server_side=True, credentials=server_credentials, channel_bindings=bindings
            )

        def client(sock: socket.socket, client_view: bytes | None = client_view) -> _driver.BlockingPeer | None:
            tls = channel.client.wrap_socket(sock)
            bindings = client_view or channel_bindings.for_ssl_object(tls)
            try:
                return _driver.BlockingPeer(
                    tls, server_side=False, credentials=client_credentials, channel_bindings=bindings, protocol=protocol
                )
            except AuthenticationError:
                if client_view is None:
                    raise
                return None

        client_peer, server_peer, error = run_pair(client, server)
        if client_view is None:
            assert error is None
            assert client_peer is not None and client_peer.info.protocol == server_peer.info.protocol == protocol
        else:
            assert isinstance(error, ChannelBindingError), error


# -- SASL GSSAPI (RFC 4752) against python-gssapi -------------------------------------------------------------

_LENGTH = struct.Struct(">I")


def send_token(sock: socket.socket, token: bytes) -> None:
    """The bind phase's stand-in for a SASL profile (e.g. LDAP BindRequest): length-prefixed tokens."""
    sock.sendall(_LENGTH.pack(len(token)) + token)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("peer closed")
        data += chunk
    return data


def recv_token(sock: socket.socket) -> bytes:
    (size,) = _LENGTH.unpack(recv_exactly(sock, 4))
    return recv_exactly(sock, size)


def gssapi_acceptor_credentials(realm: Realm) -> gssapi.Credentials:
    return gssapi.Credentials(usage="accept", store={b"keytab": realm.keytab.encode()})


def sasl_accept(sock: socket.socket, context: gssapi.SecurityContext | SecurityContext) -> None:
    """The acceptor's bind phase (python-gssapi's or ours): step until complete, then take the client's empty
    response after the last context token (RFC 4752 3.1)."""
    while not context.complete:
        send_token(sock, context.step(recv_token(sock)) or b"")
    recv_token(sock)


def sasl_initiate(sock: socket.socket, context: gssapi.SecurityContext | SecurityContext) -> bytes:
    """The initiator's bind phase (python-gssapi's or ours): step until complete, sending the empty response when
    the last step has no token (RFC 4752 3.1); return the server's first security-layer message."""
    token = context.step(None)
    while True:
        send_token(sock, token or b"")
        challenge = recv_token(sock)
        if context.complete:
            return challenge
        token = context.step(challenge)
        if context.complete and token is None:
            send_token(sock, b"")
            return recv_token(sock)


def pump(connection: Connection, sock: socket.socket) -> bytes:
    """Receive one Data event's plaintext from ``sock`` through ``connection``."""
    while True:
        event = connection.next_event()
        if isinstance(event, Data):
            return event.data
        if event is NEED_DATA:
            connection.receive_data(sock.recv(65536))
        elif not isinstance(event, HandshakeComplete):
            raise AssertionError(f"unexpected event {event!r}")


@pytest.mark.parametrize("layer", [SecurityLayer.CONFIDENTIALITY, SecurityLayer.INTEGRITY, SecurityLayer.NONE])
def test_sasl_gssapi_our_client_python_gssapi_server(realm: Realm, layer: SecurityLayer) -> None:
    """Our RFC 4752 client picks each layer a python-gssapi server offers, replies integrity-only, exchanges data."""
    seen: dict[str, Any] = {}

    def server(sock: socket.socket) -> None:
        context = gssapi.SecurityContext(usage="accept", creds=gssapi_acceptor_credentials(realm))
        sasl_accept(sock, context)
        # Offer all three layers, max buffer 65536, integrity-only wrap as RFC 4752 requires.
        offer = bytes([7]) + (65536).to_bytes(3, "big")
        send_token(sock, context.wrap(offer, False).message)
        reply = context.unwrap(recv_token(sock))
        seen["reply"] = reply.message
        seen["reply_encrypted"] = reply.encrypted
        seen["initiator"] = str(context.initiator_name)
        chosen = reply.message[0]
        if chosen == 1:
            data = recv_exactly(sock, 5)
            sock.sendall(b"raw:" + data)
            return
        # Two client records, answered by two records sent in one write.
        received = []
        for _ in range(2):
            (size,) = _LENGTH.unpack(recv_exactly(sock, 4))
            message = context.unwrap(recv_exactly(sock, size))
            seen.setdefault("data_encrypted", set()).add(message.encrypted)
            received.append(message.message)
        out = b""
        for data in received:
            token = context.wrap(b"echo:" + data, chosen == 4).message
            out += _LENGTH.pack(len(token)) + token
        sock.sendall(out)

    def client(sock: socket.socket) -> list[bytes]:
        level = {SecurityLayer.CONFIDENTIALITY: "encrypt_and_sign", SecurityLayer.INTEGRITY: "sign"}.get(layer, "none")
        context = SecurityContext.client(
            protocol="kerberos",
            target="host/localhost",
            credentials=Credentials(ccache=realm.ccache),
            protection_level=level,
        )
        challenge = sasl_initiate(sock, context)
        reply, negotiated = sasl_gssapi.client_reply(context, challenge, layer=layer, max_buffer=32768)
        send_token(sock, reply)
        assert negotiated.layer == layer and negotiated.peer_max_buffer == 65536
        connection = sasl_gssapi.connection(context, negotiated, max_buffer=32768)
        assert (
            connection.info is not None and connection.info.protection_level.value == negotiated.protection_level.value
        )
        if layer == SecurityLayer.NONE:
            sock.sendall(connection.send(b"hello"))
            return [recv_exactly(sock, 9)]
        sock.sendall(connection.send(b"first") + connection.send(b"second"))
        return [pump(connection, sock), pump(connection, sock)]

    result, _, error = run_pair(client, server)
    if error is not None:
        raise error
    assert seen["initiator"] == realm.principal
    assert seen["reply"][0] == int(layer)
    assert seen["reply"][1:4] == ((32768).to_bytes(3, "big") if layer != SecurityLayer.NONE else b"\0\0\0")
    assert seen["reply_encrypted"] is False  # RFC 4752: the layer messages are integrity-only
    if layer == SecurityLayer.NONE:
        assert result == [b"raw:hello"]
    else:
        assert result == [b"echo:first", b"echo:second"]
        assert seen["data_encrypted"] == {layer == SecurityLayer.CONFIDENTIALITY}


@pytest.mark.parametrize("layer", [SecurityLayer.CONFIDENTIALITY, SecurityLayer.INTEGRITY])
def test_sasl_gssapi_python_gssapi_client_our_server(realm: Realm, layer: SecurityLayer) -> None:
    """Our RFC 4752 server offers only protected layers, takes a python-gssapi client's choice and authzid, echoes."""

    def server(sock: socket.socket) -> bytes:
        context = SecurityContext.server(
            protocol="kerberos", credentials=Credentials(keytab=realm.keytab), protection_level="sign"
        )
        sasl_accept(sock, context)
        send_token(sock, sasl_gssapi.server_offer(context, max_buffer=40000))
        negotiated = sasl_gssapi.server_accept(context, recv_token(sock))
        assert negotiated.peer_max_buffer == 20000 and negotiated.authzid == b"admin"
        connection = sasl_gssapi.connection(context, negotiated, max_buffer=40000)
        data = pump(connection, sock)
        sock.sendall(connection.send(data.upper()))
        return negotiated.layer

    def client(sock: socket.socket) -> tuple[bytes, bool, int]:
        name = gssapi.Name("host@localhost", gssapi.NameType.hostbased_service)
        context = gssapi.SecurityContext(
            name=name,
            usage="initiate",
            mech=gssapi.MechType.kerberos,
            flags=gssapi.RequirementFlag.integrity | gssapi.RequirementFlag.mutual_authentication,
        )
        challenge = sasl_initiate(sock, context)
        offer = context.unwrap(challenge)
        assert offer.encrypted is False
        send_token(sock, context.wrap(bytes([int(layer)]) + (20000).to_bytes(3, "big") + b"admin", False).message)
        token = context.wrap(b"sealed?", layer == SecurityLayer.CONFIDENTIALITY).message
        sock.sendall(_LENGTH.pack(len(token)) + token)
        (size,) = _LENGTH.unpack(recv_exactly(sock, 4))
        answer = context.unwrap(recv_exactly(sock, size))
        return answer.message, answer.encrypted, offer.message[0]

    (message, encrypted, offered), chosen, error = run_pair(client, server)
    if error is not None:
        raise error
    assert offered == 6  # integrity | confidentiality: "sign" is required, so no NONE layer
    assert chosen == layer
    assert message == b"SEALED?"
    assert encrypted is (layer == SecurityLayer.CONFIDENTIALITY)


def _our_client_rejects_offer(realm: Realm, offer: Callable[[Any], bytes], error: type[NegotiateError]) -> None:
    """A python-gssapi server sends ``offer(its context)`` as the security-layer offer; our client raises ``error``."""

    def server(sock: socket.socket) -> None:
        context = gssapi.SecurityContext(usage="accept", creds=gssapi_acceptor_credentials(realm))
        sasl_accept(sock, context)
        send_token(sock, offer(context))

    def client(sock: socket.socket) -> None:
        context = SecurityContext.client(protocol="kerberos", credentials=Credentials(ccache=realm.ccache))
        send_token(sock, context.step(None) or b"")
        context.step(recv_token(sock))
        send_token(sock, b"")
        with pytest.raises(error):
            sasl_gssapi.client_reply(context, recv_token(sock))

    _, _, server_error = run_pair(client, server)
    assert server_error is None


def test_sasl_gssapi_client_refuses_layer_not_offered(realm: Realm) -> None:
    """Our SASL GSSAPI client raises ProtectionLevelError when only the no-security layer it cannot use is offered."""
    only_no_security_layer = bytes([1, 0, 0, 0])
    _our_client_rejects_offer(
        realm, lambda context: context.wrap(only_no_security_layer, False).message, ProtectionLevelError
    )


def test_sasl_gssapi_forged_offer_is_an_integrity_error(realm: Realm) -> None:
    """Our SASL GSSAPI client raises IntegrityError on a tampered security-layer offer."""

    def forged(context: Any) -> bytes:
        token = bytearray(context.wrap(bytes([6, 0, 0x10, 0]), False).message)
        token[-1] ^= 1
        return bytes(token)

    _our_client_rejects_offer(realm, forged, IntegrityError)
