"""The user's alternative, jetblack-negotiate-stream: its async client against our asyncio streams server.

``alternative.jetblack.{bulk,pingpong}.sealed`` run only when ``jetblack_negotiate_stream`` is importable (else
they are reported as skipped). It is a client only; the server side is ours, so the figure mixes both
implementations' costs.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import time
from typing import Any

from .config import LOCALHOST, WRITE_SIZE
from .loopback import StreamsPipe
from .registry import Context, Scenario, Unavailable, options, require
from .results import BulkOutcome, PingPongOutcome, Result, bulk_result, pingpong_result
from .verify import StreamVerifier, pattern_block
from .workloads import PING, echo, receive_into

__all__ = ["alternative_scenarios", "jetblack"]


def jetblack(ctx: Context, kind: str) -> Result:
    """jetblack-negotiate-stream's NegotiateStreamAsync client against our asyncio streams server (sealed, SPNEGO)."""
    alternative = require("jetblack_negotiate_stream")
    ours = require("negotiate_stream.asyncio_")
    name = f"alternative.jetblack.{kind}.sealed"
    credentials = ctx.users.client_credentials()
    server_options = {**options(ctx, "sealed", True), "protocol": "negotiate"}

    async def main() -> Result:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[StreamsPipe] = loop.create_future()
        release = asyncio.Event()

        async def handle(reader: Any, writer: Any) -> None:
            accepted.set_result(StreamsPipe(reader, writer))
            await release.wait()

        server = await ours.start_server(handle, LOCALHOST, 0, **server_options)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(LOCALHOST, port)
        client = _jetblack_client(alternative, ctx, reader, writer, credentials)
        try:
            await client.authenticate_as_client()
        except Exception as exc:  # its client picks its own mechanism and credentials; report why, do not fail
            client.close()
            server.close()
            raise Unavailable(f"its client could not authenticate here ({type(exc).__name__}: {exc})") from exc
        peer = await asyncio.wait_for(accepted, 30)
        try:
            if kind == "bulk":
                return bulk_result(name, "alternative", "sealed", await _jetblack_bulk(client, peer, ctx))
            return pingpong_result(name, "alternative", "sealed", await _jetblack_pingpong(client, peer, ctx))
        finally:
            release.set()
            client.close()
            server.close()

    result: Result = asyncio.run(main())
    return result


def _jetblack_client(alternative: Any, ctx: Context, reader: Any, writer: Any, credentials: Any) -> Any:
    """Build its client with whichever constructor the installed version has.

    0.2.x takes ``(hostname, reader, writer)`` and the current user's credentials, which for NTLM pyspnego reads
    from ``$NTLM_USER_FILE`` (first entry) when the context is created: point it at the run's test account.
    """
    cls = alternative.NegotiateStreamAsync
    if "username" in inspect.signature(cls).parameters:
        principal = f"{credentials.domain}\\{credentials.username}"
        return cls(reader, writer, username=principal, password=credentials.password, local_hostname="localhost")
    previous = os.environ.get("NTLM_USER_FILE")
    os.environ["NTLM_USER_FILE"] = ctx.users.path
    try:
        return cls("localhost", reader, writer)
    finally:
        if previous is None:
            del os.environ["NTLM_USER_FILE"]
        else:
            os.environ["NTLM_USER_FILE"] = previous


async def _jetblack_bulk(client: Any, peer: StreamsPipe, ctx: Context) -> BulkOutcome:
    total = ctx.config.bulk_bytes
    block = pattern_block()
    verifier = StreamVerifier(block, total)
    task = asyncio.ensure_future(receive_into(peer, verifier))
    started = time.perf_counter()
    for _ in range(total // WRITE_SIZE):
        client.write(block)
        await client.drain()
    await task
    return BulkOutcome(verifier.received, time.perf_counter() - started, verifier.ok)


async def _jetblack_pingpong(client: Any, peer: StreamsPipe, ctx: Context) -> PingPongOutcome:
    rounds = ctx.config.pingpong_rounds
    task = asyncio.ensure_future(echo(peer, rounds))
    verified = True
    started = time.perf_counter()
    for _ in range(rounds):
        client.write(PING)
        await client.drain()
        verified = await client.read() == PING and verified
    seconds = time.perf_counter() - started
    await task
    return PingPongOutcome(rounds, seconds, verified)


def alternative_scenarios() -> list[Scenario]:
    """jetblack-negotiate-stream's bulk and ping-pong (skipped when it is not installed)."""
    return [
        Scenario(
            f"alternative.jetblack.{kind}.sealed",
            "alternative",
            kind,
            "sealed",
            functools.partial(jetblack, kind=kind),
        )
        for kind in ("bulk", "pingpong")
    ]
