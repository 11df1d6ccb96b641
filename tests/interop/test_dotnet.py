""".NET Core 3.1 ``NegotiateStream`` (NnsPeer) against our client and our server: NTLM and Kerberos.

Each case moves 1 MiB through the peer's echo and checks it byte for byte. NTLM at ``Sign`` uses
``ntlm_seal_sign_only=True``: .NET on Linux signs through gss-ntlmssp, whose wrap always seals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from negotiate_stream import asyncio_
from negotiate_stream._context import Credentials
from negotiate_stream.errors import (
    AuthenticationError,
    HandshakeError,
    IntegrityError,
    NegotiateError,
    ProtectionLevelError,
)
from tests.support.krb5_realm import Realm

from . import _driver
from .conftest import NTLM_DOMAIN, NTLM_PASSWORD, NTLM_USER, DotNetPeer, echo_through, nnspeer_random

pytestmark = pytest.mark.interop

MIB = 1 << 20
E_FAIL = 0x80004005
ERROR_TRUST_FAILURE = 0x000006FE
DOTNET_LEVEL = {"encrypt_and_sign": "EncryptAndSign", "sign": "Sign", "none": "None"}


@pytest.fixture(scope="module", autouse=True)
def realm(krb5_realm: Realm, ntlm_user_file: str) -> Iterator[Realm]:
    """The MIT realm for Kerberos, and the shared NTLM user file for both NTLM acceptors (.NET and ours)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NTLM_USER_FILE", ntlm_user_file)
        yield krb5_realm


def ntlm_credentials(password: str = NTLM_PASSWORD) -> Credentials:
    return Credentials(username=NTLM_USER, domain=NTLM_DOMAIN, password=password)


def our_options(mechanism: str, level: str, realm: Realm, **extra: Any) -> dict[str, Any]:
    """Client options that make .NET negotiate ``mechanism`` at ``level``."""
    options: dict[str, Any] = {"target": "host/localhost", "protection_level": level}
    if mechanism == "ntlm":
        options["credentials"] = ntlm_credentials()
        # .NET uses raw NTLMSSP at None and SPNEGO otherwise; gss-ntlmssp seals at Sign.
        options["protocol"] = "ntlm" if level == "none" else "negotiate"
        options["ntlm_seal_sign_only"] = True
    else:
        options["credentials"] = Credentials(ccache=realm.ccache)
        options["protocol"] = "kerberos"
        options["require_mutual_auth"] = True
    options.update(extra)
    return options


def server_options(mechanism: str, level: str, ntlm_user_file: str, realm: Realm) -> dict[str, Any]:
    return {
        "credentials": Credentials(ntlm_user_file=ntlm_user_file, keytab=realm.keytab),
        "protection_level": level,
        "ntlm_seal_sign_only": True,
    }


def dotnet_client_args(mechanism: str, level: str, realm: Realm, password: str = NTLM_PASSWORD) -> list[str]:
    args = ["--target", "host/localhost", "--protection", DOTNET_LEVEL[level]]
    if mechanism == "ntlm":
        args += ["--user", NTLM_USER, "--password", password, "--domain", NTLM_DOMAIN]
    return args  # Kerberos: the realm's ticket cache (KRB5CCNAME)


def refused_by_dotnet_server(dotnet: DotNetPeer, connect: Callable[[int], object]) -> HandshakeError:
    """``connect(port)`` to a .NET EncryptAndSign echo server raises its HandshakeError; the server logs the failure."""
    server = dotnet.server("--echo", "--protection", "EncryptAndSign")
    with pytest.raises(HandshakeError) as caught:
        connect(server.port)
    status, log = server.finish()
    assert status == 1
    assert "AuthenticationException" in log
    return caught.value


# .NET peer limitations (measured, see scripts/interop/README.md): as a client, Kerberos Sign raises
# PlatformNotSupportedException (MIT always sets the confidentiality flag) and Kerberos None switches to NTLM.
OUR_CLIENT_CASES = [
    ("ntlm", "encrypt_and_sign"),
    ("ntlm", "sign"),
    ("ntlm", "none"),
    ("kerberos", "encrypt_and_sign"),
    ("kerberos", "sign"),
    ("kerberos", "none"),
]
DOTNET_CLIENT_CASES = [
    ("ntlm", "encrypt_and_sign"),
    ("ntlm", "sign"),
    ("ntlm", "none"),
    ("kerberos", "encrypt_and_sign"),
]


@pytest.mark.parametrize(("mechanism", "level"), OUR_CLIENT_CASES)
def test_our_client_dotnet_server_echo(dotnet: DotNetPeer, realm: Realm, mechanism: str, level: str) -> None:
    """Our client and the .NET server echo 1 MiB byte-exact per mechanism and level; we report what was negotiated."""
    server = dotnet.server("--echo", "--protection", DOTNET_LEVEL[level])
    info, log = echo_through(server, nnspeer_random(MIB), **our_options(mechanism, level, realm))
    assert info.protocol == mechanism
    # .NET's Kerberos "Sign" is sealed (MIT sets the confidentiality flag): we report what was negotiated.
    expected_level = "encrypt_and_sign" if (mechanism, level) == ("kerberos", "sign") else level
    assert info.protection_level.value == expected_level
    assert info.mutually_authenticated is (mechanism == "kerberos")
    assert f"echoed {MIB} bytes" in log


@pytest.mark.parametrize(("mechanism", "level"), DOTNET_CLIENT_CASES)
def test_dotnet_client_our_server_echo(
    dotnet: DotNetPeer, realm: Realm, ntlm_user_file: str, mechanism: str, level: str
) -> None:
    """The .NET client and our server echo 1 MiB byte-exact; we report the mechanism, level and client identity."""
    args = dotnet_client_args(mechanism, level, realm)
    with dotnet.client_against_us(*args, "--send-random", str(MIB), "--echo") as (listening, client):
        peer = _driver.accept(listening, **server_options(mechanism, level, ntlm_user_file, realm))
        try:
            assert peer.info.protocol == mechanism
            assert peer.info.protection_level.value == level
            expected = f"{NTLM_DOMAIN}\\{NTLM_USER}" if mechanism == "ntlm" else realm.principal
            assert peer.info.peer_identity == expected
            assert peer.echo_until_eof() == MIB
        finally:
            peer.close()
        _, log = client.communicate(timeout=60)
    assert client.returncode == 0, log
    assert f"echo ok: {MIB} bytes" in log
    assert f"type={'Kerberos' if mechanism == 'kerberos' else 'NTLM'}" in log


def test_our_client_wrong_password_gets_dotnet_error(dotnet: DotNetPeer, realm: Realm) -> None:
    """A wrong NTLM password fails our client with the .NET server's E_FAIL HandshakeError."""
    options = our_options("ntlm", "encrypt_and_sign", realm)
    options["credentials"] = ntlm_credentials("wrong password")
    error = refused_by_dotnet_server(dotnet, lambda port: _driver.connect(port, **options))
    assert error.status == E_FAIL  # .NET Core 3.1 on Linux reports a logon failure as E_FAIL


def test_dotnet_client_wrong_password_gets_our_error(dotnet: DotNetPeer, realm: Realm, ntlm_user_file: str) -> None:
    """Our server rejects a .NET client's wrong password itself; .NET decodes our Error frame."""
    args = dotnet_client_args("ntlm", "encrypt_and_sign", realm, password="wrong password")
    with dotnet.client_against_us(*args, "--send", "hello", "--echo") as (listening, client):
        with pytest.raises(AuthenticationError) as caught:
            _driver.accept(listening, **server_options("ntlm", "encrypt_and_sign", ntlm_user_file, realm))
        assert not isinstance(caught.value, HandshakeError)  # our own verdict, not the peer's
        _, log = client.communicate(timeout=60)
    assert client.returncode == 1
    # .NET decoded our Error frame into an AuthenticationException (a bare EOF would give an IOException).
    assert "AuthenticationException: Authentication failed on the remote side" in log, log


def test_protection_mismatch_dotnet_server(dotnet: DotNetPeer, realm: Realm) -> None:
    """Our client at Sign against a .NET EncryptAndSign server fails with ERROR_TRUST_FAILURE."""
    error = refused_by_dotnet_server(dotnet, lambda port: _driver.connect(port, **our_options("ntlm", "sign", realm)))
    assert error.status == ERROR_TRUST_FAILURE


def test_protection_mismatch_dotnet_client(dotnet: DotNetPeer, realm: Realm, ntlm_user_file: str) -> None:
    """A .NET client at Sign gets ProtectionLevelError from our EncryptAndSign server, reported to it as 1790."""
    args = dotnet_client_args("ntlm", "sign", realm)
    with dotnet.client_against_us(*args, "--send", "hello", "--echo") as (listening, client):
        with pytest.raises(ProtectionLevelError):
            _driver.accept(listening, **server_options("ntlm", "encrypt_and_sign", ntlm_user_file, realm))
        _, log = client.communicate(timeout=60)
    assert client.returncode == 1
    # Our Error frame carried ERROR_TRUST_FAILURE (1790), which .NET maps to its protection-level message.
    assert "A remote side security requirement was not fulfilled" in log, log
    assert "1790" in log, log


def test_dotnet_server_kerberos_with_password(dotnet: DotNetPeer, realm: Realm) -> None:
    """Our client gets its own ticket from a password (no ticket cache) and requires mutual authentication."""
    server = dotnet.server("--echo", "--protection", "EncryptAndSign")
    credentials = Credentials(username=realm.principal, password=realm.password, ccache=None)
    info, _ = echo_through(
        server,
        b"hello",
        target="host/localhost",
        credentials=credentials,
        require_mutual_auth=True,
        allow_ntlm_fallback=False,
    )
    assert (info.protocol, info.mutually_authenticated) == ("kerberos", True)


# -- peer limitations, kept as tests so that the evidence is re-measured on every run ---------------------------


def test_limitation_dotnet_kerberos_sign_client(dotnet: DotNetPeer, realm: Realm, ntlm_user_file: str) -> None:
    """.NET Core 3.1 on Linux cannot be a Kerberos client at Sign: MIT grants confidentiality it did not ask for."""
    _, log = dotnet.hello_to_our_server(
        server_options("kerberos", "sign", ntlm_user_file, realm),
        *dotnet_client_args("kerberos", "sign", realm),
    )
    assert "PlatformNotSupportedException" in log, log


def test_limitation_dotnet_kerberos_none_client_uses_ntlm(
    dotnet: DotNetPeer, realm: Realm, ntlm_user_file: str
) -> None:
    """At ProtectionLevel.None the .NET client uses the NTLM package only: with just a ticket cache it fails."""
    outcome, log = dotnet.hello_to_our_server(
        server_options("kerberos", "none", ntlm_user_file, realm),
        *dotnet_client_args("kerberos", "none", realm),
    )
    assert "auth ok" not in log, log
    assert "NTLM authentication is not possible with default credentials" in log, log
    assert isinstance(outcome, NegotiateError)  # the client hung up during the handshake


def test_windows_layout_sign_is_not_what_dotnet_on_linux_sends(dotnet: DotNetPeer, realm: Realm) -> None:
    """Without ntlm_seal_sign_only, our NTLM Sign records (signature + plaintext) do not match gss-ntlmssp's."""
    server = dotnet.server("--echo", "--protection", "Sign")
    peer = _driver.connect(server.port, **our_options("ntlm", "sign", realm, ntlm_seal_sign_only=False))
    try:
        assert peer.info.protection_level.value == "sign"
        peer.sendall(b"hello")
        with pytest.raises((IntegrityError, EOFError, OSError)):
            peer.recv_exactly(5)
    finally:
        peer.close()
    status, log = server.finish()
    assert status == 1, log


def test_dotnet_client_kerberos_password_our_server(dotnet: DotNetPeer, realm: Realm, ntlm_user_file: str) -> None:
    """.NET gets its own ticket from ``--user alice --domain INTEROP.TEST --password``; we accept with the keytab."""
    user, domain = realm.principal.split("@")
    outcome, log = dotnet.hello_to_our_server(
        {**server_options("kerberos", "encrypt_and_sign", ntlm_user_file, realm), "allow_ntlm_fallback": False},
        *["--target", "host/localhost", "--user", user, "--domain", domain, "--password", realm.password],
    )
    assert "echo ok" in log and "type=Kerberos" in log, log
    assert outcome.protocol == "kerberos" and outcome.peer_identity == realm.principal


# -- the asyncio adapter against the same peer ---------------------------------------------------------------


@pytest.mark.parametrize(("mechanism", "level"), [("ntlm", "encrypt_and_sign"), ("kerberos", "encrypt_and_sign")])
def test_asyncio_client_dotnet_server(dotnet: DotNetPeer, realm: Realm, mechanism: str, level: str) -> None:
    """The asyncio client echoes 1 MiB byte-exact through the .NET server over NTLM and Kerberos."""
    server = dotnet.server("--echo", "--protection", DOTNET_LEVEL[level])
    payload = nnspeer_random(MIB)

    async def main() -> bytes:
        reader, writer = await asyncio_.open_connection(
            "127.0.0.1", server.port, **our_options(mechanism, level, realm)
        )
        assert writer.get_extra_info("negotiated_protocol") == mechanism
        assert writer.get_extra_info("mutually_authenticated") is (mechanism == "kerberos")
        writer.write(payload)
        await writer.drain()
        echoed = await reader.readexactly(MIB)
        writer.close()  # not wait_closed(): see test_asyncio_wait_closed_after_echo
        return echoed

    assert asyncio.run(main()) == payload
    status, log = server.finish()
    assert status == 0, log
    assert f"echoed {MIB} bytes" in log


@pytest.mark.parametrize(("mechanism", "level"), [("ntlm", "sign"), ("kerberos", "encrypt_and_sign")])
def test_asyncio_server_dotnet_client(
    dotnet: DotNetPeer, realm: Realm, ntlm_user_file: str, mechanism: str, level: str
) -> None:
    """The asyncio server echoes all of a .NET client's 1 MiB over NTLM Sign and Kerberos EncryptAndSign."""

    async def main() -> tuple[int, str, int]:
        served: list[int] = []

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            total = 0
            while chunk := await reader.read(1 << 20):
                writer.write(chunk)
                await writer.drain()
                total += len(chunk)
            served.append(total)
            writer.close()

        server = await asyncio_.start_server(
            echo, "127.0.0.1", 0, **server_options(mechanism, level, ntlm_user_file, realm)
        )
        port = server.sockets[0].getsockname()[1]
        args = dotnet_client_args(mechanism, level, realm)
        client = await asyncio.create_subprocess_exec(
            dotnet.run_script,
            "client",
            "--port",
            str(port),
            "--timeout",
            "30",
            *args,
            "--send-random",
            str(MIB),
            "--echo",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, log = await asyncio.wait_for(client.communicate(), 60)
        server.close()
        await server.wait_closed()
        return client.returncode or 0, log.decode(), served[0] if served else -1

    status, log, served = asyncio.run(main())
    assert status == 0, log
    assert f"echo ok: {MIB} bytes" in log
    assert served == MIB


def test_asyncio_wait_closed_after_echo(dotnet: DotNetPeer, realm: Realm) -> None:
    """writer.wait_closed() returns after a 1 MiB echo with the .NET server that paused and resumed reading."""
    server = dotnet.server("--echo", "--protection", "EncryptAndSign")

    async def main() -> None:
        reader, writer = await asyncio_.open_connection(
            "127.0.0.1", server.port, **our_options("ntlm", "encrypt_and_sign", realm)
        )
        writer.write(nnspeer_random(MIB))  # enough for flow control to pause and resume reading
        await reader.readexactly(MIB)
        writer.close()
        await writer.wait_closed()

    try:
        asyncio.run(main())
    finally:
        server.finish()


def test_asyncio_client_wrong_password(dotnet: DotNetPeer, realm: Realm) -> None:
    """A wrong NTLM password fails asyncio_.open_connection with the .NET server's E_FAIL HandshakeError."""
    options = our_options("ntlm", "encrypt_and_sign", realm, credentials=ntlm_credentials("wrong password"))
    error = refused_by_dotnet_server(
        dotnet, lambda port: asyncio.run(asyncio_.open_connection("127.0.0.1", port, **options))
    )
    assert error.status == E_FAIL
