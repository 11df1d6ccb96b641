"""``negotiate-stream serve`` against hostile peers, through real subprocesses and loopback sockets.

An authenticated client that stalls mid-record is closed after ``--idle-timeout``; a stream broken by a tampered
record is reported by its root cause; a handshake token that is no Negotiate message is reported as such. The
clients authenticate by hand (:func:`tests.support.cli.authenticated_client`) and then write exactly the bytes
each case needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from typing import Any

import pytest

from negotiate_stream._framing import nns
from negotiate_stream.cli._report import Reporter
from negotiate_stream.errors import SEC_E_INVALID_TOKEN, BrokenStreamError, IntegrityError
from negotiate_stream.testing import NTLMUsers
from tests.support.aio import run
from tests.support.cli import USER, authenticated_client, gateway, serve


async def _stall_mid_record(port: int, users: NTLMUsers) -> tuple[bytes, float]:
    """Authenticate, send the first half of a record and nothing more; return what the server sent back before
    it closed, and how long after the half record that was."""
    peer = await authenticated_client(port, users)
    record = peer.connection.send(b"the second half of this record never arrives")
    peer.writer.write(record[: len(record) // 2])
    await peer.writer.drain()
    stalled = time.monotonic()
    rest = await peer.reader.read()  # until the server closes the connection
    peer.writer.close()
    return rest, time.monotonic() - stalled


@pytest.mark.parametrize("json_output", [True, False], ids=["json", "text"])
def test_idle_timeout_closes_a_client_stalled_mid_record(ntlm_users: NTLMUsers, json_output: bool) -> None:
    """A client that authenticates, sends half a record and stalls is closed after ``--idle-timeout`` and the
    closing is logged with its peer, identity and the idle seconds."""
    with serve(ntlm_users, "--echo", "--idle-timeout", "1", json_output=json_output) as server:
        rest, waited = run(_stall_mid_record(server.port, ntlm_users))
        assert server.stop() == 0, server.stderr
    assert rest == b""  # closed without a byte: nothing was ever delivered to echo
    assert waited > 0.5  # the server waited for the record rather than closing at once
    if not json_output:
        assert f"closed {USER}'s connection: no data from the client for 1 s (--idle-timeout)" in server.stderr
        return
    assert [e["event"] for e in server.events] == ["listening", "handshake", "idle_timeout", "stopped"]
    assert server.events[0]["idle_timeout"] == 1.0
    idle = server.events[2]
    assert idle["peer"] == server.events[1]["peer"]
    assert idle["peer_identity"] == USER
    assert idle["idle_seconds"] == 1.0
    assert idle["bytes_received"] == idle["bytes_sent"] == 0


def test_idle_timeout_zero_keeps_a_stalled_client(ntlm_users: NTLMUsers) -> None:
    """``--idle-timeout 0`` disables the limit: a client that stalls mid-record for longer than the limit of the
    test above stays connected, and its record is echoed once completed."""
    message = b"finished after a pause"

    async def stall_then_finish(port: int) -> bytes:
        peer = await authenticated_client(port, ntlm_users)
        record = peer.connection.send(message)
        peer.writer.write(record[:10])
        await peer.writer.drain()
        await asyncio.sleep(2)  # twice the --idle-timeout that closes the connection above
        peer.writer.write(record[10:])
        peer.writer.write_eof()  # at a record boundary: a clean end of stream
        echoed = await peer.receive(len(message) + 1)  # until the server's clean EOF
        peer.writer.close()
        return echoed

    with serve(ntlm_users, "--echo", "--idle-timeout", "0") as server:
        assert run(stall_then_finish(server.port)) == message
        assert server.stop() == 0, server.stderr
    assert [e["event"] for e in server.events] == ["listening", "handshake", "closed", "stopped"]
    assert server.events[0]["idle_timeout"] == 0.0
    assert server.events[2]["bytes_received"] == len(message)


#: How often the service behind the gateway writes a line: ten times per --idle-timeout, so that the service's
#: traffic alone would keep the connection alive many times over if it counted, even on a busy machine.
TICK_PERIOD = 0.1


async def _read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything read until the peer closes: its EOF, or the reset its close becomes if it left data unread.

    Read as it arrives: a StreamReader that meets a reset raises at once, even with bytes still in its buffer.
    """
    data = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while chunk := await reader.read(65536):
            data += chunk
    return bytes(data)


async def _forward_idle_scenario(users: NTLMUsers) -> tuple[bytes, list[bytes], list[dict[str, Any]]]:
    """``serve --forward --idle-timeout 1`` in front of a service that writes a line every :data:`TICK_PERIOD`; the
    client sends one record, then half of one, then only listens. Returns what the client received, what the
    service got, and the gateway's events."""
    seen: list[bytes] = []

    async def ticking_service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def tick() -> None:
            while True:
                writer.write(b"tick\n")
                await writer.drain()
                await asyncio.sleep(TICK_PERIOD)

        ticker = asyncio.ensure_future(tick())
        # Until the gateway closes its side. It drops the stalled connection without reading what the service
        # still sends, so a tick in flight when it closes turns its close into a reset: more likely on a busy
        # machine, where more time passes between the gateway's last read and its close.
        seen.append(await _read_until_closed(reader))
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await ticker
        writer.close()

    service = await asyncio.start_server(ticking_service, "127.0.0.1", 0)
    service_port = service.sockets[0].getsockname()[1]
    try:
        async with gateway(users, "--forward", f"127.0.0.1:{service_port}", "--idle-timeout", "1") as running:
            peer = await authenticated_client(running.port, users)
            complete = peer.connection.send(b"hello")
            partial = peer.connection.send(b"never completed")  # after "hello": records carry sequence numbers
            peer.writer.write(complete + partial[:8])
            await peer.writer.drain()
            received = await peer.receive(1 << 20)  # everything until the gateway closes
            peer.writer.close()
    finally:
        service.close()
        await service.wait_closed()
    assert running.returncode == 0
    return received, seen, running.events


def test_forward_idle_timeout_counts_only_the_clients_data(ntlm_users: NTLMUsers) -> None:
    """With ``--forward``, idle means no data from the client: a client stalled mid-record is closed after the
    timeout although the service kept sending to it all along."""
    received, seen, events = run(_forward_idle_scenario(ntlm_users))
    assert seen == [b"hello"]  # the complete record reached the service, the half one never did
    assert received.count(b"tick\n") >= 2  # the service's lines kept flowing during the stall
    assert [e["event"] for e in events] == ["listening", "handshake", "idle_timeout", "stopped"]
    idle = events[2]
    assert idle["peer_identity"] == USER
    assert idle["idle_seconds"] == 1.0
    assert idle["bytes_received"] == len(b"hello")
    assert idle["bytes_sent"] == len(received)


@pytest.mark.parametrize("json_output", [True, False], ids=["json", "text"])
def test_tampered_record_in_one_segment_is_reported_by_its_root_cause(ntlm_users: NTLMUsers, json_output: bool) -> None:
    """A valid record and a tampered one arriving in one TCP segment break the stream; ``serve`` reports the root
    cause (IntegrityError, SEC_E_MESSAGE_ALTERED), not the BrokenStreamError a later call meets."""

    async def valid_then_tampered(port: int) -> None:
        peer = await authenticated_client(port, ntlm_users)
        tampered = bytearray(peer.connection.send(b"tampered record"))
        tampered[-1] ^= 0x01
        peer.writer.write(peer.connection.send(b"valid record") + bytes(tampered))  # one write: one segment
        await peer.writer.drain()
        await peer.reader.read()  # until the server closes the connection
        peer.writer.close()

    with serve(ntlm_users, json_output=json_output) as server:
        run(valid_then_tampered(server.port))
        assert server.stop() == 0, server.stderr
    if not json_output:
        failure = [line for line in server.stderr.splitlines() if "protocol error" in line]
        assert len(failure) == 1, server.stderr
        assert "IntegrityError" in failure[0] and "SEC_E_MESSAGE_ALTERED" in failure[0]
        assert "BrokenStreamError" not in server.stderr and "broken by an earlier error" not in server.stderr
        return
    failed = [e for e in server.events if e["event"] == "connection_failed"]
    assert len(failed) == 1, server.events
    assert failed[0]["error"] == "IntegrityError"
    assert failed[0]["status"] == "SEC_E_MESSAGE_ALTERED"
    assert failed[0]["exit_code"] == 4
    assert "SEC_E_MESSAGE_ALTERED" in str(failed[0]["message"])


@pytest.mark.parametrize("json_output", [True, False], ids=["json", "text"])
def test_failure_report_names_the_cause_of_a_broken_stream(json_output: bool) -> None:
    """Whichever call meets the broken stream first (often the write of data that arrived just before the tampered
    record), the report names the error that broke it: class, status, message and exit code."""
    cause = IntegrityError("a record failed its integrity check")
    try:
        try:
            raise cause
        except IntegrityError as exc:
            raise BrokenStreamError("cannot send: the stream is broken by an earlier error") from exc
    except BrokenStreamError as exc:
        broken = exc
    out = io.StringIO()
    Reporter("serve", json_output, out, human=out).failure("connection_failed", "127.0.0.1:1", broken, peer="p")
    if json_output:
        event = json.loads(out.getvalue())
        assert event["error"] == "IntegrityError"
        assert event["status"] == "SEC_E_MESSAGE_ALTERED"
        assert event["exit_code"] == 4
        assert event["message"] == "protocol error: a record failed its integrity check [SEC_E_MESSAGE_ALTERED]"
    else:
        assert out.getvalue() == (
            "serve: 127.0.0.1:1: protocol error: a record failed its integrity check [SEC_E_MESSAGE_ALTERED] "
            "(IntegrityError)\n"
        )


def test_garbage_first_token_is_reported_as_no_negotiate_message(ntlm_users: NTLMUsers) -> None:
    """64 zero bytes as the client's first token (in a valid MS-NNS frame) are reported as a token that is not a
    SPNEGO, NTLM or Kerberos message (SEC_E_INVALID_TOKEN), not as rejected credentials or a keytab problem; the
    client gets an Error frame with that status."""

    async def send_zero_token(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(nns.encode_handshake(nns.MessageId.HANDSHAKE_IN_PROGRESS, bytes(64)))
        answer = await reader.read()  # the Error frame, then the server closes
        writer.close()
        return answer

    with serve(ntlm_users) as server:
        answer = run(send_zero_token(server.port))
        assert server.stop() == 0, server.stderr
    assert answer[0] == nns.MessageId.HANDSHAKE_ERROR
    assert nns.decode_error_code(answer[nns.HANDSHAKE_HEADER_SIZE :]) == SEC_E_INVALID_TOKEN
    failed = [e for e in server.events if e["event"] == "handshake_failed"]
    assert len(failed) == 1, server.events
    message = str(failed[0]["message"])
    assert "the client's handshake token is not a SPNEGO, NTLM or Kerberos message" in message
    assert failed[0]["status"] == "SEC_E_INVALID_TOKEN"
    assert failed[0]["error"] == "MalformedTokenError"
    assert failed[0]["exit_code"] == 4  # the peer's protocol error, not an authentication failure
    assert "keytab" not in message.lower() and "credentials" not in message
