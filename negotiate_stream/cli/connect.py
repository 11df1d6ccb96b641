"""``negotiate-stream connect``: netcat over a Negotiate-protected stream, or local port forwarding.

Without ``--local``: authenticate to HOST:PORT, then copy stdin to the server (sealed or signed per
``--protection``) and the server's verified plaintext to stdout. EOF on stdin half-closes the connection (the
server sees a clean end of stream); the command exits when the server closes its side.

With ``--local LHOST:LPORT``: listen there for plain TCP clients and carry each one over its own new protected
connection to HOST:PORT (the client half of a Negotiate "stunnel"; ``serve --forward`` is the other half). Stop
with SIGINT/SIGTERM.

Events (the handshake, the end of each connection, errors) go to stderr, as text or with ``--json`` as JSON lines;
stdout carries only the data. A progress line (bytes and MB/s each way) is shown on stderr when it is a terminal,
or with ``--progress``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..asyncio_ import wrap_streams
from ._arguments import add_client_options, add_common_options, parse_address
from ._credentials import client_options
from ._errors import EXIT_CODES_HELP, EXIT_INTERRUPTED, EXIT_OK
from ._relay import RELAY_CHUNK, Counters, relay, serve_until_stopped
from ._report import Reporter, format_address, session_fields, setup_logging

__all__ = ["EPILOG", "SUMMARY", "add_arguments", "run"]

EPILOG = f"""examples:
  # send a file through a sealed connection to an echo server and keep the answer (password from $NS_PASSWORD)
  negotiate-stream connect server.example.com:9000 --user 'EXAMPLE\\alice' --password-env NS_PASSWORD \\
      < big.bin > echoed.bin

  # check that a .NET NegotiateStream service accepts your Kerberos ticket (kinit first), with a trace
  echo hello | negotiate-stream connect app.example.com:9000 --target host/app.example.com -v

  # .NET on Linux, NTLM sign-only records; password prompted on the terminal
  negotiate-stream connect 10.0.0.5:9000 --user alice --domain EXAMPLE --protection sign --ntlm-seal-sign-only

  # NTLM with the account's NT hash (32 hex digits in $NS_NT_HASH) instead of its password
  negotiate-stream connect 10.0.0.5:9000 --user 'EXAMPLE\\alice' --nt-hash-env NS_NT_HASH < request.bin

  # Kerberos delegation: the service may act as you on other hosts (a forwardable ticket: kinit -f)
  negotiate-stream connect app.example.com:9000 --protocol kerberos --delegate < request.bin

  # local port forwarding: plain clients of 127.0.0.1:6380 reach the far side of a 'serve --forward'
  negotiate-stream connect gateway.example.com:9000 --local 127.0.0.1:6380 --ccache FILE:/tmp/krb5cc_1000 --json

{EXIT_CODES_HELP}
  130 interrupted (Ctrl-C) before the transfer finished
"""


#: The command's line in ``negotiate-stream --help``.
SUMMARY = "netcat over a protected stream (stdin/stdout), or forward a local port over one"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``connect`` arguments and options."""
    parser.add_argument("address", metavar="HOST:PORT", help="the negotiate server (serve, or a .NET service)")
    parser.add_argument(
        "--local", metavar="LHOST:LPORT", help="listen here and forward each plain TCP client over its own connection"
    )
    parser.add_argument(
        "--progress", action="store_true", help="show the progress line on stderr even when it is not a terminal"
    )
    add_common_options(parser)
    add_client_options(parser)


@dataclass
class _Link:
    """A protected connection; ``plain_writer`` must stay referenced while it is used.

    asyncio's ``StreamWriter.__del__`` closes its transport, and the protected streams share that transport.
    """

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    plain_writer: asyncio.StreamWriter
    fields: dict[str, Any]


async def _open(host: str, port: int, args: argparse.Namespace, options: dict[str, Any]) -> _Link:
    """TCP connect (error class: connection), then the handshake (error class: authentication)."""
    options = {"target": f"host/{host}", **options}
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=args.handshake_timeout)
    started = time.monotonic()
    try:
        sreader, swriter = await wrap_streams(
            reader, writer, server_side=False, handshake_timeout=args.handshake_timeout, **options
        )
    except BaseException:
        writer.close()
        raise
    fields = session_fields(swriter.get_extra_info("negotiate_stream"), time.monotonic() - started)
    return _Link(sreader, swriter, writer, fields)


def _describe_session(address: str, fields: dict[str, Any]) -> str:
    return (
        f"authenticated to {address}, server {fields['peer_identity']} ({fields['protocol']}, "
        f"{fields['protection_level']}, impersonation level: {fields['impersonation_level']}, "
        f"mutual auth: {'yes' if fields['mutually_authenticated'] else 'no'}, {fields['handshake_ms']} ms)"
    )


class _Progress:
    """A minimal progress line on stderr: bytes each way and MB/s, redrawn at most twice a second."""

    def __init__(self, counters: Counters, enabled: bool) -> None:
        self.counters = counters
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.enabled:
            self.task = asyncio.ensure_future(self._loop())

    def _line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        up, down = self.counters.up, self.counters.down
        rate = (up + down) / elapsed / 1e6
        return f"sent {up / 2**20:9.1f} MiB, received {down / 2**20:9.1f} MiB, {rate:7.1f} MB/s, {elapsed:6.1f} s"

    async def _loop(self) -> None:
        interval = 0.5 if self.tty else 2.0  # a log file gets fewer lines than a terminal gets redraws
        while True:
            await asyncio.sleep(interval)
            sys.stderr.write(f"\r{self._line()}" if self.tty else f"progress: {self._line()}\n")
            sys.stderr.flush()

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            sys.stderr.write(f"\r{self._line()}\n" if self.tty else f"progress: {self._line()}\n")
            sys.stderr.flush()


class _StdinReader:
    """Reads stdin in a daemon thread (works for terminals, pipes and regular files alike).

    A daemon thread, not the loop's executor: a read blocked on a terminal must not keep the process alive after
    the server closed the connection. At most ``window`` chunks wait in the queue (back-pressure).
    """

    def __init__(self, window: int = 4) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[bytes | OSError] = asyncio.Queue()
        self._credit = threading.Semaphore(window)
        threading.Thread(target=self._read, name="negotiate-stream-stdin", daemon=True).start()

    def _read(self) -> None:
        fd = sys.stdin.fileno()
        while True:
            self._credit.acquire()
            try:
                chunk: bytes | OSError = os.read(fd, RELAY_CHUNK)
            except OSError as exc:
                chunk = exc
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, chunk)
            except RuntimeError:  # the loop is closed: the command has finished
                return
            if not chunk or isinstance(chunk, OSError):
                return

    async def read(self) -> bytes:
        """The next chunk of stdin; ``b""`` at EOF."""
        chunk = await self._queue.get()
        self._credit.release()
        if isinstance(chunk, OSError):
            raise chunk
        return chunk


async def _stdin_to_server(writer: asyncio.StreamWriter, counters: Counters) -> None:
    stdin = _StdinReader()
    while chunk := await stdin.read():
        writer.write(chunk)
        counters.up += len(chunk)
        await writer.drain()
    writer.write_eof()


async def _server_to_stdout(reader: asyncio.StreamReader, counters: Counters) -> None:
    out = sys.stdout.buffer
    while data := await reader.read(RELAY_CHUNK):
        counters.down += len(data)
        try:
            out.write(data)
            out.flush()
        except BrokenPipeError:
            return  # the consumer of stdout went away (e.g. `| head`): nothing left to do


async def _netcat(args: argparse.Namespace, options: dict[str, Any], reporter: Reporter) -> int:
    host, port = parse_address(args.address, what="address")
    address = format_address((host, port))
    link = await _open(host, port, args, options)
    reader, writer = link.reader, link.writer
    reporter.event("connected", _describe_session(address, link.fields), server=address, **link.fields)
    counters = Counters()
    progress = _Progress(counters, args.progress or sys.stderr.isatty())
    progress.start()
    started = time.monotonic()
    sender = asyncio.ensure_future(_stdin_to_server(writer, counters))
    try:
        # The command ends when the server's side ends; our sending side may still be waiting on a terminal.
        await _server_to_stdout(reader, counters)
        if sender.done():
            sender.result()  # a failed send is the error to report
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        progress.stop()
        writer.close()
    reporter.event(
        "closed",
        f"closed: {counters.up} bytes sent, {counters.down} bytes received",
        bytes_sent=counters.up,
        bytes_received=counters.down,
        seconds=round(time.monotonic() - started, 3),
    )
    return EXIT_OK


async def _forward_local(args: argparse.Namespace, options: dict[str, Any], reporter: Reporter) -> int:
    host, port = parse_address(args.address, what="address")
    address = format_address((host, port))
    lhost, lport = parse_address(args.local, what="--local")
    active: set[asyncio.Task[None]] = set()
    count = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1
        task = asyncio.current_task()
        assert task is not None
        active.add(task)
        client = format_address(writer.get_extra_info("peername"))
        counters = Counters()
        try:
            try:
                link = await _open(host, port, args, options)
            except Exception as exc:
                reporter.failure("connection_failed", f"{client}: cannot reach {address}", exc, client=client)
                return
            reporter.event(
                "connected", f"{client}: {_describe_session(address, link.fields)}", client=client, **link.fields
            )
            try:
                await relay((reader, writer), (link.reader, link.writer), counters)
            except Exception as exc:
                reporter.failure("connection_failed", client, exc, client=client)
                return
            reporter.event(
                "closed",
                f"{client}: closed: {counters.up} bytes sent, {counters.down} bytes received",
                client=client,
                bytes_sent=counters.up,
                bytes_received=counters.down,
            )
        finally:
            writer.close()
            active.discard(task)

    server = await asyncio.start_server(handle, lhost, lport)
    local = server.sockets[0].getsockname()
    reporter.event(
        "listening",
        f"listening on {format_address(local)}, forwarding to {address}; stop with Ctrl-C",
        host=local[0],
        port=local[1],
        server=address,
    )
    await serve_until_stopped(server, active)
    reporter.event("stopped", f"stopped after {count} connections", connections=count)
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Run ``connect``; returns the exit status (see ``--help``)."""
    reporter = Reporter("connect", args.json, sys.stderr)
    setup_logging(args, sys.stderr)
    try:
        options = client_options(args)
        main = _forward_local if args.local else _netcat
        return asyncio.run(main(args, options, reporter))
    except KeyboardInterrupt:
        return EXIT_OK if args.local else EXIT_INTERRUPTED
    except Exception as exc:
        return reporter.fatal(exc)
