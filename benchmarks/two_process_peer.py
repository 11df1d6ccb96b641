"""The child-process end of the two-process scenarios: one loopback connection served by our asyncio Protocol.

Run as ``python -m benchmarks --peer SPEC_JSON``. The child listens on 127.0.0.1, prints ``port <n>`` on stdout,
serves exactly one connection in the mode the spec names, and prints one JSON line of what it measured (bytes
received, verified, its own CPU seconds) when the parent closes the connection.

Modes: ``sink`` verifies ``total`` bytes of the seeded pattern then writes one acknowledgement byte (the parent
stops its clock on it); ``source`` writes ``total`` bytes of the pattern after the parent's GO byte, honouring flow
control; ``echo`` writes back everything it receives. ``level`` ``plain`` serves plain TCP (the baseline),
otherwise NTLM at that level.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from .config import LOCALHOST
from .protocols import Source
from .verify import StreamVerifier, pattern_block

__all__ = ["ACK", "GO", "PeerSpec", "main", "serve_peer"]

#: The acknowledgement byte a sink writes once it has verified the whole stream.
ACK = b"\x06"
#: The byte that asks a ``source`` child to start sending (so the clock starts with the stream, not the handshake).
GO = b"g"
#: A child gives up (and exits non-zero) after this long without finishing.
PEER_TIMEOUT = 600.0


@dataclass(frozen=True)
class PeerSpec:
    """What the child does: ``mode`` (sink/source/echo), ``level`` (plain/sealed/sign), sizes and the accounts."""

    mode: str
    level: str
    total: int = 0
    seed: int = 0
    ntlm_user_file: str = ""

    def to_argument(self) -> str:
        """The JSON command-line argument of the child."""
        return json.dumps(asdict(self))

    @classmethod
    def from_argument(cls, text: str) -> PeerSpec:
        """Parse :meth:`to_argument`'s output."""
        return cls(**json.loads(text))


class _PeerApp(Source):
    """The application protocol of the child (behind a NegotiateProtocol, or directly on TCP for ``plain``)."""

    def __init__(self, spec: PeerSpec, finished: asyncio.Future[None]) -> None:
        super().__init__()
        self.spec = spec
        self.finished = finished
        self.block = pattern_block(spec.seed)
        self.verifier = StreamVerifier(self.block, spec.total) if spec.mode == "sink" else None
        self.writer_task: asyncio.Task[None] | None = None
        self.started = False

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.spec.mode == "source":
            if not self.started:  # the parent's GO byte: start the clocked stream now
                self.started = True
                coroutine = self.write_pattern(self.transport.write, self.block, self.spec.total)
                self.writer_task = asyncio.get_running_loop().create_task(coroutine)
        elif self.spec.mode == "echo":
            self.transport.write(data)
        elif self.verifier is not None:
            self.verifier.feed(data)
            if self.verifier.complete:
                self.transport.write(ACK)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_exception(ConnectionError("connection lost"))
        if not self.finished.done():
            self.finished.set_result(None)


def _server_protocol(spec: PeerSpec, app: _PeerApp) -> asyncio.BaseProtocol:
    if spec.level == "plain":
        return app
    from negotiate_stream import Connection, Credentials, SecurityContext
    from negotiate_stream.asyncio_ import NegotiateProtocol

    from .registry import LEVELS

    credentials = Credentials(ntlm_user_file=spec.ntlm_user_file)
    context = SecurityContext.server(credentials=credentials, protocol="ntlm", protection_level=LEVELS[spec.level])
    return NegotiateProtocol(Connection(context), app)


async def serve_peer(spec: PeerSpec) -> dict[str, Any]:
    """Serve one connection as ``spec`` says; returns what the child measured."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    app = _PeerApp(spec, finished)
    server = await loop.create_server(lambda: _server_protocol(spec, app), LOCALHOST, 0, backlog=1)
    print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
    cpu = time.process_time()
    await asyncio.wait_for(finished, PEER_TIMEOUT)
    cpu = time.process_time() - cpu
    server.close()
    if app.writer_task is not None and not app.writer_task.done():
        app.writer_task.cancel()
    verifier = app.verifier
    return {
        "received": verifier.received if verifier else None,
        "verified": verifier.ok if verifier else None,
        "cpu_seconds": round(cpu, 4),
    }


def main(argument: str) -> int:
    """The child's entry point: serve, then print the JSON outcome line."""
    outcome = asyncio.run(serve_peer(PeerSpec.from_argument(argument)))
    print(json.dumps(outcome), flush=True)
    return 0
