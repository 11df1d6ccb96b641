"""``negotiate-stream serve`` / ``connect`` sessions through real subprocesses and loopback sockets.

NTLM accounts come from the session's ``ntlm_users`` fixture; the client's password reaches it through
``--password-env``, as a script would pass it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from negotiate_stream.testing import NTLMUsers
from tests.support.cli import TIMEOUT, USER, client_env, connect_args, gateway, run_connect, serve


def test_echo_pipes_10_mib_file_back_identical(ntlm_users: NTLMUsers, tmp_path: Path) -> None:
    """A 10 MiB file piped through ``connect`` to ``serve --echo`` comes back identical, with the events reported."""
    payload = os.urandom(10 * 2**20)
    source = tmp_path / "in.bin"
    source.write_bytes(payload)
    with serve(ntlm_users) as server:
        with source.open("rb") as stdin:
            result = run_connect(server.port, "--json", stdin=stdin, password=ntlm_users.password(USER))
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout == payload
        assert server.stop() == 0, server.stderr
    client_events = [json.loads(line) for line in result.stderr.decode().splitlines()]
    assert [e["event"] for e in client_events] == ["connected", "closed"]
    assert client_events[0]["protection_level"] == "encrypt_and_sign"
    assert client_events[1]["bytes_received"] == len(payload)
    handshakes = [e for e in server.events if e["event"] == "handshake"]
    assert len(handshakes) == 1
    assert handshakes[0]["peer_identity"] == USER
    assert handshakes[0]["protocol"] == "ntlm"
    assert isinstance(handshakes[0]["handshake_ms"], float)
    closed = [e for e in server.events if e["event"] == "closed"]
    assert closed[0]["bytes_received"] == closed[0]["bytes_sent"] == len(payload)
    assert server.events[-1]["event"] == "stopped"


@pytest.mark.parametrize("protection", ["sign", "none"])
def test_echo_at_other_protection_levels(ntlm_users: NTLMUsers, protection: str) -> None:
    """Sign-only and unprotected sessions echo the data too and report the negotiated level."""
    data = b"level check\n" * 1000
    with serve(ntlm_users, "--echo", "--protection", protection) as server:
        result = run_connect(
            server.port,
            "--protection",
            protection,
            "--protocol",
            "ntlm",
            stdin=data,
            password=ntlm_users.password(USER),
        )
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout == data
        assert server.stop() == 0
    assert f"ntlm, {protection}" in result.stderr.decode()


async def _forward_scenario(ntlm_users: NTLMUsers, data: bytes) -> tuple[bytes, list[bytes], str, list[dict[str, Any]]]:
    """A plain asyncio echo service, ``serve --forward`` in front of it, ``connect`` through both."""
    seen: list[bytes] = []

    async def plain_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = await reader.read()  # until the forwarded half-close
        seen.append(received)
        writer.write(received[::-1])
        await writer.drain()
        writer.close()

    service = await asyncio.start_server(plain_echo, "127.0.0.1", 0)
    service_port = service.sockets[0].getsockname()[1]
    try:
        async with gateway(ntlm_users, "--forward", f"127.0.0.1:{service_port}") as running:
            client = await asyncio.create_subprocess_exec(
                *connect_args(running.port),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=client_env(ntlm_users.password(USER)),
            )
            out, err = await asyncio.wait_for(client.communicate(data), TIMEOUT)
            assert client.returncode == 0, err.decode()
    finally:
        service.close()
        await service.wait_closed()
    assert running.returncode == 0
    return out, seen, err.decode(), running.events


def test_forward_to_plain_tcp_service(ntlm_users: NTLMUsers) -> None:
    """``serve --forward`` relays plaintext and half-closes both ways to a plain TCP service."""
    data = os.urandom(300_000)
    out, seen, client_stderr, events = asyncio.run(_forward_scenario(ntlm_users, data))
    assert seen == [data]  # the plain service got the plaintext, half-close included
    assert out == data[::-1]  # and its answer came back through the protected hop
    assert "authenticated to 127.0.0.1" in client_stderr
    assert [e["event"] for e in events] == ["listening", "handshake", "closed", "stopped"]
    assert events[0]["mode"] == "forward"
    assert events[2]["bytes_received"] == len(data)
    assert events[2]["bytes_sent"] == len(data)


def test_connect_local_forwards_plain_clients(ntlm_users: NTLMUsers) -> None:
    """``connect --local`` carries each plain client over its own protected connection."""
    with serve(ntlm_users) as server:
        forwarder = subprocess.Popen(
            connect_args(server.port, "--local", "127.0.0.1:0", "--json"),
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=client_env(ntlm_users.password(USER)),
        )
        try:
            assert forwarder.stderr is not None
            listening = json.loads(forwarder.stderr.readline())
            assert listening["event"] == "listening"

            async def two_plain_clients() -> list[bytes]:
                async def one(message: bytes) -> bytes:
                    reader, writer = await asyncio.open_connection("127.0.0.1", listening["port"])
                    writer.write(message)
                    writer.write_eof()
                    answer = await reader.read()
                    writer.close()
                    return answer

                return list(await asyncio.gather(one(b"first" * 5000), one(b"second" * 7000)))

            answers = asyncio.run(asyncio.wait_for(two_plain_clients(), TIMEOUT))
        finally:
            forwarder.send_signal(signal.SIGTERM)
            _, err = forwarder.communicate(timeout=TIMEOUT)
        assert answers == [b"first" * 5000, b"second" * 7000]
        assert forwarder.returncode == 0
        assert server.stop() == 0
    events = [listening, *(json.loads(line) for line in err.decode().splitlines())]
    assert sorted(e["event"] for e in events) == ["closed", "closed", "connected", "connected", "listening", "stopped"]
    assert sum(e["event"] == "handshake" for e in server.events) == 2


def test_wrong_password_fails_with_one_line_reason(ntlm_users: NTLMUsers) -> None:
    """A rejected password exits 3 with one stderr line naming SEC_E_LOGON_DENIED; the server reports it."""
    with serve(ntlm_users) as server:
        result = run_connect(server.port, stdin=b"never sent", password="wrong password")
        assert server.stop() == 0
    assert result.returncode == 3
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("negotiate-stream connect: authentication failed")
    assert "SEC_E_LOGON_DENIED" in lines[0]
    failed = [e for e in server.events if e["event"] == "handshake_failed"]
    assert len(failed) == 1 and failed[0]["error"] == "AuthenticationError"


def test_wrong_password_json_error_event(ntlm_users: NTLMUsers) -> None:
    """With ``--json`` a rejected password ends with an ``error`` event carrying the exit code and status."""
    with serve(ntlm_users) as server:
        result = run_connect(server.port, "--json", stdin=b"", password="wrong password")
        server.stop()
    events = [json.loads(line) for line in result.stderr.decode().splitlines()]
    assert events[-1]["event"] == "error"
    assert events[-1]["exit_code"] == result.returncode == 3
    assert events[-1]["status"] == "SEC_E_LOGON_DENIED"


def test_verbose_trace_shows_handshake_steps_without_secrets(ntlm_users: NTLMUsers) -> None:
    """``-v`` traces each handshake message and the outcome, and never the password."""
    with serve(ntlm_users) as server:
        result = run_connect(server.port, "-v", stdin=b"x", password=ntlm_users.password(USER))
        server.stop()
    trace = result.stderr.decode()
    assert result.returncode == 0, trace
    assert "handshake sent HANDSHAKE_IN_PROGRESS with a" in trace
    assert "handshake received HANDSHAKE_DONE" in trace
    assert "handshake complete (client side): protocol ntlm" in trace
    assert ntlm_users.password(USER) not in trace


def test_connection_refused_exits_5(unused_port: int) -> None:
    """A refused TCP connection exits 5 with a one-line connection error."""
    result = run_connect(unused_port, stdin=b"", password="never used")
    assert result.returncode == 5
    assert result.stderr.decode().startswith("negotiate-stream connect: connection error")


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
