"""Helpers shared by the command-line tests: the ``negotiate-stream`` command run as real subprocesses, and a
client that authenticates to it by hand (a bare Connection) and then writes exactly the bytes a test wants."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import IO, Any

from negotiate_stream import Connection, SecurityContext
from negotiate_stream.testing import NTLMUsers
from tests.support.aio import RawPeer, client_options

#: The command, run the way ``python -m negotiate_stream`` runs it (no reliance on the installed script's PATH).
CLI = [sys.executable, "-m", "negotiate_stream"]
#: The account of the session's ``ntlm_users`` fixture, as ``connect --user`` takes it.
USER = "NEGOTIATE-TEST\\alice"
#: Generous guard so a hanging subprocess fails the test instead of stalling the suite; never a timing assertion.
TIMEOUT = 60
# The client reads its password from this variable: a password is never accepted on the command line.
_PASSWORD_VARIABLE = "NS_TEST_PASSWORD"
#: ``connect --nt-hash-env`` reads the account's NT hash from this variable (:func:`run_connect_nt_hash`).
NT_HASH_VARIABLE = "NS_TEST_NT_HASH"


def client_env(password: str) -> dict[str, str]:
    """The environment of a ``connect`` subprocess whose ``--password-env`` holds ``password``."""
    return {**os.environ, _PASSWORD_VARIABLE: password}


def connect_args(port: int, *extra: str) -> list[str]:
    """The command line of ``connect`` to ``127.0.0.1:port`` as :data:`USER`, password from :func:`client_env`."""
    return [*CLI, "connect", f"127.0.0.1:{port}", "--user", USER, "--password-env", _PASSWORD_VARIABLE, *extra]


def run_connect(port: int, *extra: str, stdin: bytes | IO[bytes], password: str) -> subprocess.CompletedProcess[bytes]:
    """Run :func:`connect_args` to completion, ``stdin`` (bytes or an open file) as its input; capture its output.

    The exit status is not checked here: it is what the tests assert.
    """
    source: dict[str, Any] = {"input": stdin} if isinstance(stdin, bytes) else {"stdin": stdin}
    return subprocess.run(
        connect_args(port, *extra),
        capture_output=True,
        env=client_env(password),
        timeout=TIMEOUT,
        check=False,
        **source,
    )


def run_connect_nt_hash(port: int, *extra: str, stdin: bytes, nt_hash: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``connect`` to ``127.0.0.1:port`` as :data:`USER` with ``nt_hash`` in its ``--nt-hash-env`` variable
    instead of a password; capture its output (the exit status is not checked)."""
    return subprocess.run(
        [*CLI, "connect", f"127.0.0.1:{port}", "--user", USER, "--nt-hash-env", NT_HASH_VARIABLE, *extra],
        input=stdin,
        capture_output=True,
        env={**os.environ, NT_HASH_VARIABLE: nt_hash},
        timeout=TIMEOUT,
        check=False,
    )


class Serve:
    """A running ``serve`` subprocess; once stopped, ``events`` holds its JSON lines (``--json``) and ``stderr`` its
    text output."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, *, json_output: bool = True) -> None:
        self.process = process
        self.port = port
        self.json_output = json_output
        self.events: list[dict[str, object]] = []
        self.stderr = ""

    def stop(self) -> int:
        """Stop the server as a service manager would (SIGTERM), collect its output; return its exit status."""
        self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=TIMEOUT)
        if self.json_output:
            self.events += [json.loads(line) for line in out.decode().splitlines()]
        self.stderr += err.decode()
        return self.process.returncode


@contextmanager
def serve(users: NTLMUsers, *mode: str, json_output: bool = True) -> Iterator[Serve]:
    """Run ``serve`` on a free loopback port with the accounts of ``users``; ``mode`` defaults to ``--echo``.

    With ``json_output`` (the default) it runs with ``--json``; without, its text lines are in ``Serve.stderr``.
    """
    process = subprocess.Popen(
        [
            *CLI,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--users-file",
            users.path,
            *(["--json"] if json_output else []),
            *(mode or ("--echo",)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        if json_output:
            first = json.loads(process.stdout.readline())
            assert first["event"] == "listening", first
            server = Serve(process, int(first["port"]))
            server.events.append(first)
        else:
            line = process.stderr.readline().decode()
            listening = re.search(r"listening on \S+:(\d+) ", line)
            assert listening is not None, line
            server = Serve(process, int(listening[1]), json_output=False)
            server.stderr = line
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


async def authenticated_client(port: int, users: NTLMUsers) -> RawPeer:
    """Connect to ``127.0.0.1:port`` and authenticate as :data:`USER` with a bare :class:`Connection` (raw NTLM).

    After the handshake the test owns the wire: ``peer.connection.send(data)`` makes records, ``peer.writer``
    writes any bytes (half a record, a tampered one), ``peer.receive(n)`` reads verified plaintext.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    peer = RawPeer(reader, writer, Connection(SecurityContext.create(False, **client_options(users))))
    await peer.handshake()
    return peer


class Gateway:
    """A ``serve --json`` subprocess run from an event loop (see :func:`gateway`); once its ``async with`` ended,
    ``events`` holds all its JSON lines (the ``listening`` one first) and ``returncode`` its exit status."""

    def __init__(self, listening: dict[str, Any]) -> None:
        self.port = int(listening["port"])
        self.events: list[dict[str, Any]] = [listening]
        self.returncode: int | None = None


@asynccontextmanager
async def gateway(users: NTLMUsers, *options: str) -> AsyncIterator[Gateway]:
    """Run ``serve --json`` on a free loopback port with the accounts of ``users`` and ``options`` (the mode, e.g.
    ``--forward HOST:PORT``); on exit stop it with SIGTERM and collect its events."""
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--users-file",
        users.path,
        "--json",
        *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        running = Gateway(json.loads(await process.stdout.readline()))
        yield running
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(process.communicate(), TIMEOUT)
    running.events += [json.loads(line) for line in out.decode().splitlines()]
    running.returncode = process.returncode
