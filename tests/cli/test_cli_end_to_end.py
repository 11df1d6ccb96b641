"""``negotiate-stream serve`` / ``connect`` through real subprocesses, NTLM accounts from an NTLMUsers file."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from negotiate_stream.testing import NTLMUsers

ROOT = Path(__file__).resolve().parents[2]
USER = "NEGOTIATE-TEST\\alice"
PASSWORD = "correct horse battery staple"
CLI = [sys.executable, "-m", "negotiate_stream"]
TIMEOUT = 60


@pytest.fixture(scope="module")
def users() -> Iterator[NTLMUsers]:
    with NTLMUsers({"alice": PASSWORD}) as accounts:
        yield accounts


def client_env(password: str = PASSWORD) -> dict[str, str]:
    return {**os.environ, "NS_TEST_PASSWORD": password}


def connect_args(port: int, *extra: str) -> list[str]:
    return [*CLI, "connect", f"127.0.0.1:{port}", "--user", USER, "--password-env", "NS_TEST_PASSWORD", *extra]


class Serve:
    """A running ``serve --json`` subprocess; ``events`` holds its JSON lines once stopped."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port
        self.events: list[dict[str, object]] = []
        self.stderr = ""

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=TIMEOUT)
        self.events += [json.loads(line) for line in out.decode().splitlines()]
        self.stderr = err.decode()
        return self.process.returncode


@contextmanager
def serve(users: NTLMUsers, *mode: str) -> Iterator[Serve]:
    process = subprocess.Popen(
        [*CLI, "serve", "--listen", "127.0.0.1:0", "--users-file", users.path, "--json", *(mode or ("--echo",))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())
        assert first["event"] == "listening", first
        server = Serve(process, int(first["port"]))
        server.events.append(first)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_echo_pipes_10_mib_file_back_identical(users: NTLMUsers, tmp_path: Path) -> None:
    payload = os.urandom(10 * 2**20)
    source = tmp_path / "in.bin"
    source.write_bytes(payload)
    with serve(users) as server:
        with source.open("rb") as stdin:
            result = subprocess.run(  # noqa: PLW1510 - the exit status is what we check
                connect_args(server.port, "--json"),
                stdin=stdin,
                capture_output=True,
                env=client_env(),
                timeout=TIMEOUT,
            )
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
def test_echo_at_other_protection_levels(users: NTLMUsers, protection: str) -> None:
    data = b"level check\n" * 1000
    with serve(users, "--echo", "--protection", protection) as server:
        result = subprocess.run(  # noqa: PLW1510 - the exit status is what we check
            connect_args(server.port, "--protection", protection, "--protocol", "ntlm"),
            input=data,
            capture_output=True,
            env=client_env(),
            timeout=TIMEOUT,
        )
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout == data
        assert server.stop() == 0
    assert f"ntlm, {protection}" in result.stderr.decode()


async def _forward_scenario(users: NTLMUsers, data: bytes) -> tuple[bytes, list[bytes], str, list[str]]:
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
    gateway = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--forward",
        f"127.0.0.1:{service_port}",
        "--users-file",
        users.path,
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert gateway.stdout is not None
        listening = json.loads(await gateway.stdout.readline())
        client = await asyncio.create_subprocess_exec(
            *connect_args(listening["port"]),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=client_env(),
        )
        out, err = await asyncio.wait_for(client.communicate(data), TIMEOUT)
        assert client.returncode == 0, err.decode()
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway_out, _ = await asyncio.wait_for(gateway.communicate(), TIMEOUT)
        service.close()
        await service.wait_closed()
    assert gateway.returncode == 0
    return out, seen, err.decode(), [json.dumps(listening), *gateway_out.decode().splitlines()]


def test_forward_to_plain_tcp_service(users: NTLMUsers) -> None:
    data = os.urandom(300_000)
    out, seen, client_stderr, gateway_lines = asyncio.run(_forward_scenario(users, data))
    assert seen == [data]  # the plain service got the plaintext, half-close included
    assert out == data[::-1]  # and its answer came back through the protected hop
    assert "authenticated to 127.0.0.1" in client_stderr
    events = [json.loads(line) for line in gateway_lines]
    assert [e["event"] for e in events] == ["listening", "handshake", "closed", "stopped"]
    assert events[0]["mode"] == "forward"
    assert events[2]["bytes_received"] == len(data)
    assert events[2]["bytes_sent"] == len(data)


def test_connect_local_forwards_plain_clients(users: NTLMUsers) -> None:
    with serve(users) as server:
        forwarder = subprocess.Popen(
            connect_args(server.port, "--local", "127.0.0.1:0", "--json"),
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=client_env(),
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


def test_wrong_password_fails_with_one_line_reason(users: NTLMUsers) -> None:
    with serve(users) as server:
        result = subprocess.run(  # noqa: PLW1510 - the exit status is what we check
            connect_args(server.port),
            input=b"never sent",
            capture_output=True,
            env=client_env("wrong password"),
            timeout=TIMEOUT,
        )
        assert server.stop() == 0
    assert result.returncode == 3
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("negotiate-stream connect: authentication failed")
    assert "SEC_E_LOGON_DENIED" in lines[0]
    failed = [e for e in server.events if e["event"] == "handshake_failed"]
    assert len(failed) == 1 and failed[0]["error"] == "AuthenticationError"


def test_wrong_password_json_error_event(users: NTLMUsers) -> None:
    with serve(users) as server:
        result = subprocess.run(  # noqa: PLW1510 - the exit status is what we check
            connect_args(server.port, "--json"),
            input=b"",
            capture_output=True,
            env=client_env("wrong password"),
            timeout=TIMEOUT,
        )
        server.stop()
    events = [json.loads(line) for line in result.stderr.decode().splitlines()]
    assert events[-1]["event"] == "error"
    assert events[-1]["exit_code"] == result.returncode == 3
    assert events[-1]["status"] == "SEC_E_LOGON_DENIED"


def test_verbose_trace_shows_handshake_steps_without_secrets(users: NTLMUsers) -> None:
    with serve(users) as server:
        result = subprocess.run(  # noqa: PLW1510 - the exit status is what we check
            connect_args(server.port, "-v"), input=b"x", capture_output=True, env=client_env(), timeout=TIMEOUT
        )
        server.stop()
    trace = result.stderr.decode()
    assert result.returncode == 0, trace
    assert "handshake sent HANDSHAKE_IN_PROGRESS with a" in trace
    assert "handshake received HANDSHAKE_DONE" in trace
    assert "handshake complete (client side): protocol ntlm" in trace
    assert PASSWORD not in trace


def test_connection_refused_exits_5(unused_port: int) -> None:
    result = subprocess.run(  # noqa: PLW1510 - the exit status is what we check
        connect_args(unused_port), input=b"", capture_output=True, env=client_env(), timeout=TIMEOUT
    )
    assert result.returncode == 5
    assert result.stderr.decode().startswith("negotiate-stream connect: connection error")


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["connect", "127.0.0.1:9", "--password", "hunter2"], "--password is not accepted"),
        (["connect", "127.0.0.1:9", "--framing", "sasl"], "--framing sasl is not supported"),
        (["connect", "127.0.0.1:9", "--user", "a", "--password-env", "NS_TEST_UNSET_VARIABLE"], "is not set"),
        (["connect", "no-port-here"], "is not HOST:PORT"),
        (["serve", "--listen", "127.0.0.1:0", "--echo", "--users-file", "/nonexistent/users"], "cannot read"),
        (["serve", "--listen", "127.0.0.1:0"], "one of the arguments --echo --forward is required"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], message: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NS_TEST_UNSET_VARIABLE"}
    result = subprocess.run(  # noqa: PLW1510
        [*CLI, *argv], input=b"", capture_output=True, env=env, timeout=TIMEOUT
    )
    assert result.returncode == 2
    assert message in result.stderr.decode()
    assert "hunter2" not in result.stderr.decode()


@pytest.mark.parametrize("command", [[], ["serve"], ["connect"], ["demo"]])
def test_help_of_each_command(command: list[str]) -> None:
    result = subprocess.run(  # noqa: PLW1510
        [*CLI, *command, "--help"], capture_output=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode()
    assert text.startswith("usage: negotiate-stream")
    if command in (["serve"], ["connect"]):
        assert "examples:" in text
        assert "exit codes:" in text


def test_docs_build_strictly(tmp_path: Path) -> None:
    missing = [name for name in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python") if not _importable(name)]
    if missing:
        pytest.skip(f"docs toolchain not installed ({', '.join(missing)}): pip install -e '.[docs]'")
    result = subprocess.run(  # noqa: PLW1510 - the exit status is what we check
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    assert (tmp_path / "site" / "index.html").exists()
    assert (tmp_path / "site" / "reference" / "index.html").exists()


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
