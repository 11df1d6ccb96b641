"""NegotiateSocket moving data: both directions at each level, bulk, threads, shared crypto state."""

from __future__ import annotations

import hashlib
import os
import queue
import random
import socket
import struct
import threading
from functools import partial

import pytest

from negotiate_stream import ProtectionLevel
from negotiate_stream.sync import NegotiateSocket
from negotiate_stream.testing import NTLMUsers
from tests.support.streams import (
    GUARD_TIMEOUT,
    LEVELS,
    MIB,
    Tap,
    Worker,
    digest,
    negotiated_sockets,
    recv_all,
    recv_exactly,
)


@pytest.mark.parametrize("level", LEVELS)
def test_both_directions_then_half_close(level: str, ntlm_users: NTLMUsers) -> None:
    """Data flows both ways at each level; shutdown(SHUT_WR) is a lasting EOF for the peer, one way only."""
    with negotiated_sockets(ntlm_users, level=level) as (client, server, _):
        assert client.session_info.protection_level is ProtectionLevel(level)
        assert server.session_info.peer_identity is not None
        assert server.session_info.peer_identity.lower().endswith("alice")
        client.sendall(b"ping")
        assert recv_exactly(server, 4) == b"ping"
        assert server.send(b"pong!") == 5
        assert recv_exactly(client, 5) == b"pong!"
        client.shutdown(socket.SHUT_WR)
        assert server.recv() == b""
        assert server.recv() == b""  # EOF stays EOF
        server.sendall(b"half-closed")
        assert recv_exactly(client, 11) == b"half-closed"


@pytest.mark.parametrize("level", LEVELS)
def test_one_mebibyte_each_way_at_once(level: str, ntlm_users: NTLMUsers) -> None:
    """1 MiB each way from four threads at once, each ended by shutdown, arrives intact; only sealing hides it."""
    upload, download = os.urandom(MIB), os.urandom(MIB)
    with negotiated_sockets(ntlm_users, wrap=Tap, level=level) as (client, server, tap):
        assert client.protection_level is server.protection_level is ProtectionLevel(level)
        assert server.session_info.is_encrypted is (level == "encrypt_and_sign")

        def send(sock: NegotiateSocket, data: bytes) -> None:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)

        workers = [
            Worker(lambda: send(client, upload)),
            Worker(lambda: send(server, download)),
            Worker(lambda: recv_all(server)),
            Worker(lambda: recv_all(client)),
        ]
        results = [worker.result() for worker in workers]
    assert digest(results[2]) == digest(upload)
    assert digest(results[3]) == digest(download)
    assert (upload[MIB // 2 : MIB // 2 + 64] in tap.sent) is (level != "encrypt_and_sign")


def test_reader_and_writer_threads_on_one_socket_10k_messages(ntlm_users: NTLMUsers) -> None:
    """A reader thread and a writer thread share one socket for 10,000 echoed messages, all in order."""
    rng = random.Random(5)
    messages = [os.urandom(rng.randrange(1, 700)) for _ in range(10_000)]
    with negotiated_sockets(ntlm_users) as (client, server, _):

        def echo() -> None:
            while data := server.recv(65536):
                server.sendall(data)
            server.shutdown()

        def write() -> None:
            for message in messages:
                client.sendall(struct.pack(">I", len(message)) + message)
            client.shutdown()

        def read() -> list[bytes]:
            received, file = [], client.makefile("rb")
            while header := file.read(4):
                received.append(file.read(struct.unpack(">I", header)[0]))
            return received

        echoer, writer, reader = Worker(echo), Worker(write), Worker(read)
        writer.result()
        received = reader.result()
        echoer.result()
    assert len(received) == len(messages)
    assert digest(b"".join(received)) == digest(b"".join(messages))
    assert received == messages


def test_concurrent_writer_threads_never_interleave(ntlm_users: NTLMUsers) -> None:
    """Concurrent sendall() calls that each take several socket writes arrive whole, one after another."""
    # Each message spans more records than one socket write carries, so a sendall is several writes.
    writers, size = 3, 20 * 0xFC00 + 99
    with negotiated_sockets(ntlm_users) as (client, server, _):
        workers = [Worker(partial(client.sendall, bytes([marker]) * size)) for marker in range(writers)]
        data = recv_exactly(server, writers * size)
        for worker in workers:
            worker.result()
    messages = [data[i : i + size] for i in range(0, len(data), size)]
    assert all(message == message[:1] * size for message in messages)
    assert sorted(message[0] for message in messages) == list(range(writers))


def test_shared_crypto_state_reader_and_writer_threads(ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ESS (one RC4 state for both directions) a reader and a writer thread per end stay in step."""
    # Without ESS one RC4 state and one counter serve both directions, so the peers must alternate
    # (request/response); each side still reads and writes from two threads at once.
    monkeypatch.setenv("LM_COMPAT_LEVEL", "0")
    count = 300
    with negotiated_sockets(ntlm_users) as (client, server, _):
        assert client.session_info.shares_crypto_state
        assert server.session_info.shares_crypto_state
        requests = [os.urandom(1 + i * 53 % 4000) for i in range(count)]
        turn = threading.Semaphore(1)

        def echo() -> None:
            for request in requests:
                server.sendall(hashlib.sha256(recv_exactly(server, len(request))).digest())

        def writer() -> None:
            for request in requests:
                assert turn.acquire(timeout=GUARD_TIMEOUT)
                client.sendall(request)

        echo_worker = Worker(echo)
        writer_worker = Worker(writer)
        replies = []
        for _ in requests:
            replies.append(recv_exactly(client, 32))
            turn.release()
        writer_worker.result()
        echo_worker.result()
    assert replies == [hashlib.sha256(r).digest() for r in requests]


def test_shared_crypto_state_multi_record_request_response(
    ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ESS, requests spanning several records get their replies while a reader thread waits meanwhile."""
    monkeypatch.setenv("LM_COMPAT_LEVEL", "0")  # pyspnego then negotiates NTLM without ESS
    sizes = [1, 100, 0xFC00, 0xFC00 + 1, 200_000]
    with negotiated_sockets(ntlm_users) as (client, server, _):
        assert client.session_info.shares_crypto_state and server.session_info.shares_crypto_state

        def echo() -> None:
            # Half-duplex, as such a session must be: read a whole request, then reply.
            reader = server.makefile("rb")
            while header := reader.read(4):
                server.sendall(reader.read(int.from_bytes(header, "big"))[::-1])

        replies: queue.Queue[bytes] = queue.Queue()

        def read_replies() -> None:
            # A reader thread blocked on the socket while the main thread sends: the shared lock must not be
            # held across that wait, or this deadlocks.
            for size in sizes:
                replies.put(recv_exactly(client, size))

        echoer, reader = Worker(echo), Worker(read_replies)
        for size in sizes:
            request = os.urandom(size)
            client.sendall(size.to_bytes(4, "big") + request)
            assert replies.get(timeout=GUARD_TIMEOUT) == request[::-1]  # reply before the next request
        reader.result()
        client.shutdown()
        echoer.result()
