"""Client identities across real peers: Kerberos delegation (a double hop through the MIT realm), the impersonation
level each side reports (checked against .NET's), and NT-hash client credentials against our server and .NET's.
"""

from __future__ import annotations

import gc
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from negotiate_stream._context import Credentials, SecurityContext
from negotiate_stream._events import SessionInfo
from negotiate_stream._spnego.ntlm_users import ntlm_hashes
from negotiate_stream.errors import ERROR_TRUST_FAILURE, AuthenticationError, NegotiateError
from tests.support.krb5_realm import Realm

from . import _driver
from .conftest import NTLM_DOMAIN, NTLM_PASSWORD, NTLM_USER, DotNetPeer, echo_through, run_pair

pytestmark = pytest.mark.interop

gssapi = pytest.importorskip("gssapi", reason="interop peer missing: python-gssapi (run scripts/install-interop)")
krb5 = pytest.importorskip("krb5", reason="interop peer missing: krb5 (run scripts/install-interop)")


@pytest.fixture(scope="module", autouse=True)
def realm(krb5_realm: Realm, ntlm_user_file: str) -> Iterator[Realm]:
    """The MIT realm, with no default ticket cache and no client keytab: a hop can only use the ticket it is given.

    (MIT would otherwise get a fresh ticket for the user from the realm's client keytab, and prove nothing.)
    The shared NTLM user file serves .NET's and our NTLM acceptors.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KRB5CCNAME", "FILE:/nonexistent/ccache")
        patch.setenv("KRB5_CLIENT_KTNAME", "FILE:/nonexistent/client.keytab")
        patch.setenv("NTLM_USER_FILE", ntlm_user_file)
        yield krb5_realm


def kinit(realm: Realm, path: Path, *, forwardable: bool) -> str:
    """A fresh ticket cache for the realm's user, forwardable (kinit -f) or explicitly not (kinit -F)."""
    ccache = f"FILE:{path}"
    subprocess.run(
        ["kinit", "-f" if forwardable else "-F", realm.principal],
        input=realm.password + "\n",
        env={**realm.env, "KRB5CCNAME": ccache},
        capture_output=True,
        text=True,
        check=True,
    )
    return ccache


def server_credentials(realm: Realm) -> Credentials:
    """Our acceptors: the realm's service keytab (host/localhost and HTTP/localhost)."""
    return Credentials(keytab=realm.keytab)


def authenticate(client: dict[str, Any], server: dict[str, Any]) -> tuple[Any, Any, BaseException | None]:
    """Our client against our server over a socket pair: (client info or its NegotiateError, server info, server
    error)."""

    def serve(sock: socket.socket) -> SessionInfo:
        peer = _driver.BlockingPeer(sock, server_side=True, **server)
        peer.close()
        return peer.info

    def connect(sock: socket.socket) -> SessionInfo | NegotiateError:
        try:
            peer = _driver.BlockingPeer(sock, server_side=False, **client)
        except NegotiateError as exc:
            return exc
        peer.close()
        return peer.info

    return run_pair(connect, serve)


# -- the double hop ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["kerberos", "negotiate"])
@pytest.mark.parametrize("source", ["forwardable ccache", "password"])
def test_double_hop_server_b_authenticates_the_client(realm: Realm, tmp_path: Path, protocol: str, source: str) -> None:
    """client -> A with delegate=True; A reaches B with its delegated_credentials; B authenticates the client."""
    # This process has no default ticket cache or client keytab (see the realm fixture): only the forwarded ticket
    # can get A to B, which the control below proves.
    if source == "password":
        credentials = Credentials(username=realm.principal, password=realm.password)  # pyspnego kinits forwardable
    else:
        credentials = Credentials(ccache=kinit(realm, tmp_path / "ccache", forwardable=True))
    second_hop: dict[str, Any] = {}

    def server_a(sock: socket.socket) -> SessionInfo:
        peer = _driver.BlockingPeer(sock, server_side=True, credentials=server_credentials(realm))
        delegated = peer.info.delegated_credentials
        assert delegated is not None
        client_b, server_b, error = authenticate(
            {"credentials": delegated, "target": "HTTP/localhost", "protocol": protocol},
            {"credentials": server_credentials(realm), "allowed_spns": ["HTTP/localhost"]},
        )
        second_hop.update(client=client_b, server=server_b, error=error)
        peer.sendall(b"done")
        peer.close()
        return peer.info

    def client(sock: socket.socket) -> SessionInfo:
        peer = _driver.BlockingPeer(sock, server_side=False, credentials=credentials, protocol=protocol, delegate=True)
        assert peer.recv_exactly(4) == b"done"
        peer.close()
        return peer.info

    # The control: without the delegated ticket this process cannot get one for the user at all.
    with pytest.raises(AuthenticationError):
        SecurityContext.client(
            credentials=Credentials(username=realm.principal), target="HTTP/localhost", protocol="kerberos"
        ).step(None)
    client_info, a_info, a_error = run_pair(client, server_a)
    assert a_error is None, a_error
    assert client_info.impersonation_level == a_info.impersonation_level == "delegation"
    assert a_info.peer_identity == realm.principal
    delegated = a_info.delegated_credentials
    assert delegated.username == realm.principal and delegated.ccache.startswith("MEMORY:")
    assert second_hop["error"] is None, second_hop["error"]
    assert second_hop["server"].peer_identity == realm.principal  # B authenticated the client, not A
    assert second_hop["server"].protocol == "kerberos"
    assert second_hop["server"].impersonation_level == "impersonation"  # A did not delegate further


def test_without_delegate_nothing_is_forwarded(realm: Realm, tmp_path: Path) -> None:
    """A forwardable ticket is not forwarded unless asked: "impersonation", no delegated credentials."""
    ccache = kinit(realm, tmp_path / "ccache", forwardable=True)
    client, server, error = authenticate(
        {"credentials": Credentials(ccache=ccache)}, {"credentials": server_credentials(realm)}
    )
    assert error is None
    assert client.impersonation_level == server.impersonation_level == "impersonation"
    assert server.delegated_credentials is None


@pytest.mark.parametrize("protocol", ["kerberos", "negotiate"])
def test_not_forwardable_ticket_is_refused_before_it_is_sent(realm: Realm, tmp_path: Path, protocol: str) -> None:
    """A ticket that is not forwardable: the client refuses at its first step (ERROR_TRUST_FAILURE), nobody gets in."""
    ccache = kinit(realm, tmp_path / "ccache", forwardable=False)
    client, server, server_error = authenticate(
        {"credentials": Credentials(ccache=ccache), "protocol": protocol, "delegate": True},
        {"credentials": server_credentials(realm)},
    )
    assert isinstance(client, AuthenticationError), client
    assert client.status == ERROR_TRUST_FAILURE and "not forwardable" in str(client)
    assert server is None and isinstance(server_error, NegotiateError), server_error


def test_delegated_ticket_cache_is_freed_with_its_credentials(realm: Realm, tmp_path: Path) -> None:
    """The MEMORY: cache holding the forwarded ticket is destroyed once its Credentials object is collected."""
    ccache = kinit(realm, tmp_path / "ccache", forwardable=True)
    client = SecurityContext.client(credentials=Credentials(ccache=ccache), protocol="kerberos", delegate=True)
    server = SecurityContext.server(credentials=server_credentials(realm), protocol="kerberos")
    client.step(server.step(client.step(None)))
    assert server.complete and server.delegated_credentials is not None
    name = server.delegated_credentials.ccache
    assert name is not None
    context = krb5.init_context()
    assert str(krb5.cc_get_principal(context, krb5.cc_resolve(context, name.encode()))) == realm.principal
    del server
    gc.collect()
    with pytest.raises(krb5.Krb5Error):
        krb5.cc_get_principal(context, krb5.cc_resolve(context, name.encode()))


# -- impersonation level as .NET reports it ---------------------------------------------------------------------


def dotnet_client_args(mechanism: str, level: str) -> list[str]:
    """NnsPeer client arguments: ``mechanism``'s credentials, impersonation ``level``."""
    args = ["--target", "host/localhost", "--impersonation", level]
    if mechanism == "ntlm":
        args += ["--user", NTLM_USER, "--password", NTLM_PASSWORD, "--domain", NTLM_DOMAIN]
    return args


def run_dotnet_client(dotnet: DotNetPeer, args: list[str], env: dict[str, str], **server: Any) -> tuple[Any, str]:
    """Run the .NET client with ``args`` and ``env`` against our server; return (our info or error, its log)."""
    return dotnet.hello_to_our_server(server, *args, env=env, accept_timeout=20)


@pytest.mark.parametrize("mechanism", ["ntlm", "kerberos"])
def test_our_server_reports_the_dotnet_clients_identification(
    dotnet: DotNetPeer, realm: Realm, ntlm_user_file: str, tmp_path: Path, mechanism: str
) -> None:
    """A .NET client at Identification is reported as "identification", as .NET reports it on its side."""
    env = {**realm.env, "NTLM_USER_FILE": ntlm_user_file}
    env["KRB5CCNAME"] = kinit(realm, tmp_path / "ccache", forwardable=True)
    credentials = Credentials(ntlm_user_file=ntlm_user_file, keytab=realm.keytab)
    info, log = run_dotnet_client(dotnet, dotnet_client_args(mechanism, "Identification"), env, credentials=credentials)
    assert isinstance(info, SessionInfo), log
    assert (info.protocol, info.impersonation_level, info.delegated_credentials) == (mechanism, "identification", None)
    assert "impersonation=Identification" in log, log


@pytest.mark.parametrize("level", ["Impersonation", "Delegation"])
def test_limitation_dotnet_client_allows_identification_only(
    dotnet: DotNetPeer, realm: Realm, ntlm_user_file: str, tmp_path: Path, level: str
) -> None:
    """.NET Core 3.1 on Linux allows only Identification as a client, so its delegation cannot be tested here."""
    # The .NET server test below checks our delegation against .NET instead.
    env = {**realm.env, "KRB5CCNAME": kinit(realm, tmp_path / "ccache", forwardable=True)}
    credentials = Credentials(keytab=realm.keytab)
    outcome, log = run_dotnet_client(dotnet, dotnet_client_args("kerberos", level), env, credentials=credentials)
    assert not isinstance(outcome, SessionInfo)
    assert "ArgumentOutOfRangeException" in log and "impersonationLevel" in log, log


@pytest.mark.parametrize(("delegate", "expected"), [(False, "Impersonation"), (True, "Delegation")])
def test_dotnet_server_reports_our_clients_level(
    dotnet: DotNetPeer, realm: Realm, tmp_path: Path, delegate: bool, expected: str
) -> None:
    """The .NET server reports Delegation for our delegate=True Kerberos client, and our client agrees."""
    server = dotnet.server("--echo")
    credentials = Credentials(ccache=kinit(realm, tmp_path / "ccache", forwardable=True))
    info, log = echo_through(
        server, b"hello", target="host/localhost", credentials=credentials, protocol="kerberos", delegate=delegate
    )
    assert info.impersonation_level == expected.lower()
    assert f"impersonation={expected}" in log, log


# -- NT-hash client credentials -------------------------------------------------------------------------------------


def nt_hash_credentials(password: str = NTLM_PASSWORD) -> Credentials:
    """The shared NTLM account, by its NT hash instead of its password."""
    return Credentials(username=NTLM_USER, domain=NTLM_DOMAIN, nt_hash=ntlm_hashes(password)[1].hex())


@pytest.mark.parametrize("protocol", ["ntlm", "negotiate"])
def test_nt_hash_client_dotnet_server(dotnet: DotNetPeer, protocol: str) -> None:
    """Our NT-hash client authenticates to the .NET server (gss-ntlmssp with the account's password) and echoes."""
    server = dotnet.server("--echo")
    options = {"target": "host/localhost", "credentials": nt_hash_credentials(), "protocol": protocol}
    info, log = echo_through(server, b"hashed hello", **options)
    assert info.protocol == "ntlm"
    assert f"identity={NTLM_DOMAIN}\\{NTLM_USER}".lower() in log.lower(), log


def test_wrong_nt_hash_refused_by_dotnet_server(dotnet: DotNetPeer) -> None:
    """A wrong hash gets the .NET server's HandshakeError; the hash is in no message."""
    server = dotnet.server("--echo")
    credentials = nt_hash_credentials("not the password")
    with pytest.raises(AuthenticationError) as caught:
        _driver.connect(server.port, target="host/localhost", credentials=credentials)
    assert credentials.nt_hash is not None and credentials.nt_hash not in str(caught.value)
    status, _ = server.finish()
    assert status == 1


def test_nt_hash_client_our_server(realm: Realm, ntlm_user_file: str) -> None:
    """Our NT-hash client authenticates to our server over a socket pair; the server sees the account."""
    client, server, error = authenticate(
        {"credentials": nt_hash_credentials(), "protocol": "negotiate"},
        {"credentials": Credentials(ntlm_user_file=ntlm_user_file, keytab=realm.keytab)},
    )
    assert error is None, error
    assert client.protocol == server.protocol == "ntlm"
    assert server.peer_identity == f"{NTLM_DOMAIN}\\{NTLM_USER}"
