"""Fixtures that start real peers for the interop suite, one per test module, and always stop them.

Each fixture skips (with a reason naming the missing peer and the install command) when its peer is not
installed on this machine; ``scripts/install-interop`` installs them all. The peers are:

- ``dotnet``: the .NET Core 3.1 ``NegotiateStream`` program ``scripts/interop/dotnet/NnsPeer.cs``;
- ``krb5_realm``: a throwaway MIT Kerberos realm (``scripts/interop/krb5-realm``); its environment
  (``KRB5_CONFIG``, ``KRB5CCNAME``, ``KRB5_KTNAME``...) is set in this process for the module's tests;
- ``samba_dc``: a throwaway Samba AD DC (``scripts/interop/samba-dc``; root, ports 88/135/389/636);
- ``ntlm_user_file``: a plain ``DOMAIN:USER:PASSWORD`` file that both gss-ntlmssp and pyspnego read.
- ``tls_channel``: a throwaway certificate and both ends' TLS contexts (nothing to install), with :func:`run_pair`
  to run a client and a server over one socket pair.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[2]
INTEROP = ROOT / "scripts" / "interop"
INSTALL_HINT = "run scripts/install-interop"
GSS_NTLMSSP_MECH = "1.3.6.1.4.1.311.2.2.10"

#: The NTLM account that the .NET peer (through gss-ntlmssp) and our acceptor share.
NTLM_DOMAIN = "INTEROP"
NTLM_USER = "alice"
NTLM_PASSWORD = "Passw0rd!ntlm"


#: Deterministic payload of NnsPeer's ``--send-random N``: byte i = (7*i + (i >> 8)) & 0xff.
def nnspeer_random(size: int) -> bytes:
    """The bytes NnsPeer sends for ``--send-random size``."""
    return bytes((7 * i + (i >> 8)) & 0xFF for i in range(size))


def _parse_exports(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            env[name] = value
    return env


# -- .NET NegotiateStream peer --------------------------------------------------------------------------------


@dataclass
class DotNetServer:
    """A running ``NnsPeer server``; :meth:`finish` waits for it and returns (exit status, its log)."""

    process: subprocess.Popen[str]
    port: int

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        """Wait for the server to exit (it serves one connection) and return its status and stderr."""
        try:
            _, log = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, log = self.process.communicate()
            raise
        return self.process.returncode, log

    def kill(self) -> None:
        """Stop the server if it still runs (by its own pid)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


class DotNetPeer:
    """Starts NnsPeer processes (``scripts/interop/dotnet/run``) with the current environment."""

    def __init__(self, workdir: Path) -> None:
        self.run_script = str(INTEROP / "dotnet" / "run")
        self.workdir = workdir
        self._servers: list[DotNetServer] = []
        self._count = 0

    def server(self, *args: str, env: dict[str, str] | None = None) -> DotNetServer:
        """Start ``NnsPeer server --count 1 ARGS`` on a free port and wait until it listens."""
        self._count += 1
        port_file = self.workdir / f"server{self._count}.port"
        process = subprocess.Popen(
            [
                self.run_script,
                "server",
                "--port",
                "0",
                "--port-file",
                str(port_file),
                "--count",
                "1",
                "--timeout",
                "30",
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env if env is not None else dict(os.environ),
        )
        server = DotNetServer(process, 0)
        self._servers.append(server)
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if process.poll() is not None:
                raise RuntimeError(f"NnsPeer server exited early: {process.communicate()[1]}")
            if time.monotonic() > deadline:
                raise RuntimeError("NnsPeer server did not start listening within 30 s")
            time.sleep(0.01)
        server.port = int(port_file.read_text())
        return server

    def client(self, port: int, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``NnsPeer client --port PORT ARGS`` to completion; stdout is discarded unless ``--hex`` is given."""
        return subprocess.run(
            [self.run_script, "client", "--port", str(port), "--timeout", "30", *args],
            capture_output=True,
            text=True,
            env=env if env is not None else dict(os.environ),
            timeout=90,
            check=False,
        )

    def start_client(self, port: int, *args: str) -> subprocess.Popen[str]:
        """Start ``NnsPeer client`` without waiting (for a test whose server runs in this thread)."""
        return subprocess.Popen(
            [self.run_script, "client", "--port", str(port), "--timeout", "30", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def close(self) -> None:
        """Kill every server this peer started that is still running."""
        for server in self._servers:
            server.kill()


@pytest.fixture(scope="module")
def dotnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DotNetPeer]:
    """The .NET Core NegotiateStream peer, built once; skips when dotnetcore2 or mono's mcs is missing."""
    if importlib.util.find_spec("dotnetcore2") is None:
        pytest.skip(f"interop peer missing: .NET Core runtime (Python package dotnetcore2); {INSTALL_HINT}")
    if shutil.which("mcs") is None:
        pytest.skip(f"interop peer missing: mono-mcs (compiles the .NET NnsPeer); {INSTALL_HINT}")
    build = subprocess.run(
        [str(INTEROP / "dotnet" / "build")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        check=False,
    )
    if build.returncode != 0:
        pytest.skip(f"interop peer missing: the .NET NnsPeer does not build: {build.stderr.strip()}")
    peer = DotNetPeer(tmp_path_factory.mktemp("dotnet"))
    try:
        yield peer
    finally:
        peer.close()


@pytest.fixture(scope="module")
def ntlm_user_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A ``DOMAIN:USER:PASSWORD`` file with ``INTEROP\\alice``: gss-ntlmssp reads only this plain form."""
    path = tmp_path_factory.mktemp("ntlm") / "ntlm_users"
    path.write_text(f"{NTLM_DOMAIN}:{NTLM_USER}:{NTLM_PASSWORD}\n")
    path.chmod(0o600)
    return str(path)


# -- MIT Kerberos realm ------------------------------------------------------------------------------------------


@dataclass
class Realm:
    """A running throwaway MIT realm; :attr:`env` holds its exported variables (also set in ``os.environ``)."""

    env: dict[str, str]

    @property
    def principal(self) -> str:
        """The user principal, ``alice@INTEROP.TEST``."""
        return self.env["INTEROP_KRB5_PRINCIPAL"]

    @property
    def password(self) -> str:
        """The user's password."""
        return self.env["INTEROP_KRB5_PASSWORD"]

    @property
    def keytab(self) -> str:
        """The service keytab path (``host/localhost`` and ``HTTP/localhost``), without the ``FILE:`` prefix."""
        return self.env["KRB5_KTNAME"].removeprefix("FILE:")

    @property
    def ccache(self) -> str:
        """The user's ticket cache (``FILE:...``)."""
        return self.env["KRB5CCNAME"]


def skip_without_gssapi() -> None:
    """Skip the calling test when python-gssapi (the ``kerberos`` extra) is not installed."""
    if importlib.util.find_spec("gssapi") is None:
        pytest.skip(f"interop peer missing: python-gssapi (the kerberos extra); {INSTALL_HINT}")


@pytest.fixture(scope="module")
def krb5_realm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Realm]:
    """A throwaway MIT realm for the module; skips when krb5kdc or python-gssapi is missing."""
    if shutil.which("krb5kdc") is None and not Path("/usr/sbin/krb5kdc").exists():
        pytest.skip(f"interop peer missing: MIT Kerberos KDC (Debian krb5-kdc); {INSTALL_HINT}")
    skip_without_gssapi()
    directory = tmp_path_factory.mktemp("krb5") / "realm"
    started = subprocess.run(
        [str(INTEROP / "krb5-realm"), "start", str(directory)], capture_output=True, text=True, check=False
    )
    if started.returncode != 0:
        pytest.skip(f"interop peer missing: the MIT realm did not start: {started.stderr.strip()}")
    env = _parse_exports(started.stdout)
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            yield Realm(env)
    finally:
        subprocess.run(
            [str(INTEROP / "krb5-realm"), "stop", str(directory), "--clean"], capture_output=True, check=False
        )


# -- Samba AD DC -----------------------------------------------------------------------------------------------


def _port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class SambaDC:
    """A running throwaway Samba AD DC; :attr:`env` holds its exported variables."""

    env: dict[str, str]


@pytest.fixture(scope="module")
def samba_dc(request: pytest.FixtureRequest) -> Iterator[SambaDC]:
    """A throwaway Samba AD DC with user ``bob`` for the module; skips when Samba, root or the ports are missing.

    Indirect parametrization sets ``ldap server require strong auth`` (default ``yes``); pytest stops the DC of
    one value before it starts the next, so there is still one DC at a time.
    """
    strong_auth = getattr(request, "param", "yes")
    if shutil.which("samba") is None and not Path("/usr/sbin/samba").exists():
        pytest.skip(f"interop peer missing: Samba AD DC (Debian samba, samba-ad-dc); {INSTALL_HINT}")
    if os.geteuid() != 0:
        pytest.skip("interop peer missing: the Samba AD DC needs root")
    busy = [port for port in (88, 135, 389, 636) if _port_in_use(port)]
    if busy:
        pytest.skip(f"interop peer missing: ports {busy} are taken (only one Samba DC per machine)")
    directory = Path(tempfile.mkdtemp(prefix="negotiate-stream-samba-"))
    script = str(INTEROP / "samba-dc")
    started = subprocess.run(
        [script, "start", str(directory), "--user", "bob", "--strong-auth", strong_auth],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        if started.returncode != 0:
            pytest.skip(f"interop peer missing: the Samba DC did not start: {started.stderr.strip()[-500:]}")
        yield SambaDC(_parse_exports(started.stdout))
    finally:
        subprocess.run([script, "stop", str(directory), "--clean"], capture_output=True, check=False)
        shutil.rmtree(directory, ignore_errors=True)


# -- gss-ntlmssp -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gss_ntlmssp() -> str:
    """The NTLM mechanism OID when python-gssapi sees gss-ntlmssp; skips otherwise."""
    skip_without_gssapi()
    import gssapi.raw

    mechs = {mech.dotted_form for mech in gssapi.raw.indicate_mechs()}
    if GSS_NTLMSSP_MECH not in mechs:
        pytest.skip(f"interop peer missing: gss-ntlmssp (Debian gss-ntlmssp, mech {GSS_NTLMSSP_MECH}); {INSTALL_HINT}")
    return GSS_NTLMSSP_MECH


# -- TLS channel and two-ended runs (server policy, delegation) -------------------------------------------------


@dataclass
class TLSChannel:
    """A throwaway self-signed server certificate and the TLS contexts of both ends (the client trusts anything)."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    #: The server certificate (DER): what tls-server-end-point bindings are computed from.
    certificate: bytes


@pytest.fixture(scope="module")
def tls_channel(tmp_path_factory: pytest.TempPathFactory) -> TLSChannel:
    """An RSA/SHA-256 certificate for ``localhost`` and matching server and client TLS contexts."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    directory = tmp_path_factory.mktemp("tls")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
    cert = (
        builder.serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(cert_path), str(key_path))
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    return TLSChannel(server, client, cert.public_bytes(serialization.Encoding.DER))


T = TypeVar("T")


def run_pair(
    client: Callable[[socket.socket], T], server: Callable[[socket.socket], Any]
) -> tuple[T, Any, BaseException | None]:
    """Run ``server`` in a thread and ``client`` here on a connected socket pair; return both results and the
    server's exception (the client's propagates)."""
    client_sock, server_sock = socket.socketpair()
    client_sock.settimeout(20)
    server_sock.settimeout(20)
    outcome: dict[str, Any] = {"error": None, "result": None}

    def serve() -> None:
        try:
            outcome["result"] = server(server_sock)
        except BaseException as exc:
            outcome["error"] = exc
            server_sock.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        result = client(client_sock)
    finally:
        client_sock.close()  # a failed client must not leave the server waiting for it
        thread.join(30)
        server_sock.close()
    return result, outcome["result"], outcome["error"]
