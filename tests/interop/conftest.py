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

import contextlib
import importlib.util
import os
import shutil
import socket
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

from negotiate_stream import NegotiateError, SessionInfo
from tests.support.krb5_realm import Realm, RealmUnavailable, kdc_installed, mit_realm, parse_exports
from tests.support.tls import TLSChannel, self_signed_channel

from . import _driver

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

    def start_client(self, port: int, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Start ``NnsPeer client`` without waiting (for a test whose server runs in this thread)."""
        return subprocess.Popen(
            [self.run_script, "client", "--port", str(port), "--timeout", "30", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    @contextlib.contextmanager
    def client_against_us(
        self, *args: str, env: dict[str, str] | None = None
    ) -> Iterator[tuple[socket.socket, subprocess.Popen[str]]]:
        """Our listening socket and a .NET client started against it with ``args``; killed on exit if still running."""
        with _driver.listener() as listening:
            client = self.start_client(listening.getsockname()[1], *args, env=env)
            try:
                yield listening, client
            finally:
                if client.poll() is None:
                    client.kill()
                    client.communicate()

    def hello_to_our_server(
        self, server_options: dict[str, Any], *args: str, env: dict[str, str] | None = None, accept_timeout: float = 10
    ) -> tuple[Any, str]:
        """Run a .NET client with ``args`` that sends "hello" to our server (``server_options``) and waits for the
        echo; return our server's session info (or its exception) and the client's log."""
        with self.client_against_us(*args, "--send", "hello", "--echo", env=env) as (listening, client):
            listening.settimeout(accept_timeout)
            try:
                peer = _driver.accept(listening, **server_options)
                outcome: Any = peer.info
                peer.echo_until_eof()
                peer.close()
            except (OSError, NegotiateError) as exc:
                outcome = exc
            _, log = client.communicate(timeout=60)
        return outcome, log

    def close(self) -> None:
        """Kill every server this peer started that is still running."""
        for server in self._servers:
            server.kill()


def echo_through(server: DotNetServer, message: bytes, **options: Any) -> tuple[SessionInfo, str]:
    """Connect our client (``options``) to the .NET echo ``server``, echo ``message`` byte-exact and close; return
    our session info and the server's log, once it exited cleanly."""
    peer = _driver.connect(server.port, **options)
    try:
        peer.sendall(message)
        assert peer.recv_exactly(len(message)) == message
    finally:
        peer.close()
    status, log = server.finish()
    assert status == 0, log
    return peer.info, log


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


def skip_without_gssapi() -> None:
    """Skip the calling test when python-gssapi (the ``kerberos`` extra) is not installed."""
    if importlib.util.find_spec("gssapi") is None:
        pytest.skip(f"interop peer missing: python-gssapi (the kerberos extra); {INSTALL_HINT}")


@pytest.fixture(scope="module")
def krb5_realm() -> Iterator[Realm]:
    """A throwaway MIT realm for the module, its variables set in this process; skips when krb5kdc or
    python-gssapi is missing or the realm does not start."""
    if not kdc_installed():
        pytest.skip(f"interop peer missing: MIT Kerberos KDC (Debian krb5-kdc); {INSTALL_HINT}")
    skip_without_gssapi()
    with contextlib.ExitStack() as stack:
        try:
            realm = stack.enter_context(mit_realm("negotiate-stream-krb5-"))
        except RealmUnavailable as exc:
            pytest.skip(f"interop peer missing: {exc}")
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        for name, value in realm.env.items():
            patch.setenv(name, value)
        yield realm


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
        yield SambaDC(parse_exports(started.stdout))
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


@pytest.fixture(scope="module")
def tls_channel() -> TLSChannel:
    """An RSA/SHA-256 certificate for ``localhost`` and matching server and client TLS contexts."""
    return self_signed_channel(key="rsa")


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
