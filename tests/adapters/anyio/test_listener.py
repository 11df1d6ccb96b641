"""NegotiateListener and connect() (anyio) over loopback TCP."""

from __future__ import annotations

import logging
import os

import anyio
import pytest
from anyio.abc import SocketAttribute

from negotiate_stream.anyio_ import NegotiateAttribute, NegotiateListener, NegotiateStream, connect
from negotiate_stream.errors import HandshakeError
from negotiate_stream.testing import NTLMUsers
from tests.support.streams import receive_exactly

pytestmark = pytest.mark.anyio


async def test_listener_logs_a_failed_handshake_and_keeps_serving(
    ntlm_users: NTLMUsers, caplog: pytest.LogCaptureFixture
) -> None:
    """Bad credentials and a silent peer are each logged once (no secrets) and the listener keeps serving."""
    caplog.set_level(logging.WARNING, logger="negotiate_stream")
    wrong_password = "not-the-password-" + os.urandom(4).hex()
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = tcp.extra(SocketAttribute.local_port)
    listener = NegotiateListener(
        tcp, handshake_timeout=0.5, credentials=ntlm_users.server_credentials(), protocol="ntlm"
    )
    served: list[str | None] = []

    async def echo(stream: NegotiateStream) -> None:
        async with stream:
            served.append(stream.extra(NegotiateAttribute.peer_identity))
            await stream.send(await stream.receive())

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, echo)
        with pytest.raises(HandshakeError):
            await connect(
                "127.0.0.1", port, protocol="ntlm", credentials=ntlm_users.client_credentials(password=wrong_password)
            )
        silent = await anyio.connect_tcp("127.0.0.1", port)
        async with silent:  # never speaks: the listener's handshake timeout closes it
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await silent.receive()
        async with await connect(
            "127.0.0.1", port, protocol="ntlm", credentials=ntlm_users.client_credentials()
        ) as stream:
            assert stream.session_info.peer_identity == "host/127.0.0.1"  # connect()'s default target
            await stream.send(b"still serving")
            assert await receive_exactly(stream, 13) == b"still serving"
        tg.cancel_scope.cancel()
    assert served == [ntlm_users.usernames[0]]
    warnings = [r for r in caplog.records if r.name == "negotiate_stream" and r.levelno == logging.WARNING]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]
    messages = [r.getMessage() for r in warnings]
    assert all("127.0.0.1" in m for m in messages)
    assert any("AuthenticationError" in m for m in messages)
    assert any("HandshakeTimeoutError" in m for m in messages)
    assert not any(wrong_password in m or ntlm_users.password(ntlm_users.usernames[0]) in m for m in messages)
