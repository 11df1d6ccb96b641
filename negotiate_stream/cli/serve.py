"""``negotiate-stream serve``: accept Negotiate-protected connections and echo them or forward them to a TCP service.

With ``--forward HOST:PORT`` this is a Negotiate "stunnel": each authenticated client gets its own plain TCP
connection to the service, and the plaintext is relayed both ways (half-closes included). An identity-aware
gateway: ``--allow`` lets only the listed identities in (the others are refused inside the handshake, with an
MS-NNS Error frame SEC_E_LOGON_DENIED), and ``--proxy-protocol v2`` tells the service who each client is (a PROXY
protocol v2 header with its address, TLV 0xE0 its identity, TLV 0xE1 its protocol) before any data.

Every handshake is reported (peer address, authenticated identity, protocol, protection level, duration), and
every connection ends with one audit line (identity, peer, protocol, protection, bytes each way, duration,
outcome); a failed handshake closes only that connection. An authenticated client that sends no data for
--idle-timeout seconds (including one that stops halfway through a record) is closed and reported. SIGINT or
SIGTERM stops the server cleanly (exit status 0).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from ..asyncio_ import wrap_streams
from ..errors import IdleTimeoutError
from ._allow import AccessDeniedError, AllowList, server_context
from ._arguments import add_common_options, add_server_options, parse_address
from ._credentials import server_options
from ._errors import EXIT_CODES_HELP, EXIT_OK, CLIUsageError, describe_error
from ._proxy_protocol import gateway_header
from ._relay import echo, relay, serve_until_stopped
from ._report import ConnectionAudit, Reporter, format_address, session_fields, setup_logging

__all__ = ["DEFAULT_IDLE_TIMEOUT", "EPILOG", "SUMMARY", "add_arguments", "run"]

#: Seconds an authenticated client may go without sending data (a complete record) before it is closed.
DEFAULT_IDLE_TIMEOUT = 300.0

EPILOG = f"""examples:
  # echo server for a quick test; NTLM accounts from a user file (lines DOMAIN:USER:PASSWORD)
  negotiate-stream serve --listen 127.0.0.1:9000 --echo --users-file users.txt

  # Negotiate-sealed hop in front of a plain TCP service on port 6379, JSON lines on stdout
  negotiate-stream serve --listen 0.0.0.0:9000 --forward 127.0.0.1:6379 --users-file users.txt --json

  # identity-aware gateway: only EXAMPLE's users and bob@EXAMPLE.COM; the service reads who each client is
  # from a PROXY protocol v2 header (TLV 0xE0: identity, 0xE1: ntlm/kerberos)
  negotiate-stream serve --listen :9000 --forward 127.0.0.1:8080 --keytab /etc/app.keytab \\
      --allow 'EXAMPLE\\*' --allow bob@EXAMPLE.COM --proxy-protocol v2 --json

  # Kerberos acceptor with a keytab, sign-only records, at most 50 clients at a time, handshake trace
  negotiate-stream serve --listen :9000 --echo --keytab /etc/app.keytab --target host/app.example.com \\
      --protocol kerberos --protection sign --max-connections 50 -v

  # answer only to clients that authenticated for one of these service names (others: ERROR_TRUST_FAILURE)
  negotiate-stream serve --listen :9000 --echo --users-file users.txt \\
      --allowed-spn host/app.example.com --allowed-spn HTTP/app.example.com

{EXIT_CODES_HELP}
"""


#: The command's line in ``negotiate-stream --help``.
SUMMARY = "accept protected connections; echo them or forward them to a plain TCP service"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` options."""
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", help="address to listen on (port 0: any)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--echo", action="store_true", help="send every client's plaintext back to it")
    mode.add_argument("--forward", metavar="HOST:PORT", help="relay each client to this plain TCP service")
    parser.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="serve at most N clients at a time; more are closed at once and reported (default: no limit)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT,
        metavar="SECONDS",
        help="close an authenticated client that sends no data for this long: only complete records count, so a "
        "client that stalls mid-record is closed too; with --forward, what the service sends does not count; "
        "0 disables (default: %(default)g)",
    )
    gateway = parser.add_argument_group("identity-aware gateway")
    gateway.add_argument(
        "--allow",
        action="append",
        metavar="IDENTITY",
        help="let in only the clients matched by one of these (repeatable): DOMAIN\\user, user@REALM, DOMAIN\\* "
        "or *@REALM, ignoring case; the others are refused after authentication with an error frame "
        "(SEC_E_LOGON_DENIED) and reported (default: every authenticated client)",
    )
    gateway.add_argument(
        "--proxy-protocol",
        choices=["v2"],
        help="with --forward: start each service connection with a PROXY protocol v2 header: the client's "
        "address, its identity (TLV 0xE0) and protocol (TLV 0xE1)",
    )
    add_common_options(parser)
    add_server_options(parser)


class _Server:
    def __init__(self, args: argparse.Namespace, options: dict[str, Any], reporter: Reporter) -> None:
        self.args = args
        self.options = options
        self.reporter = reporter
        self.forward = parse_address(args.forward, what="--forward") if args.forward else None
        self.allow = AllowList.parse(args.allow) if args.allow else None
        self.active: set[asyncio.Task[None]] = set()
        self.accepted = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        audit = ConnectionAudit(format_address(writer.get_extra_info("peername")))
        self.accepted += 1
        if self.args.max_connections is not None and len(self.active) >= self.args.max_connections:
            self.reporter.event(
                "rejected",
                f"{audit.peer}: closed, {len(self.active)} clients already connected (--max-connections)"
                + audit.summary("rejected"),
                reason="max-connections",
                **audit.fields("rejected"),
            )
            writer.close()
            return
        self.active.add(task)
        try:
            await self._serve_client(audit, reader, writer)
        except asyncio.CancelledError:
            # SIGINT/SIGTERM (serve_until_stopped): the connection still gets its audit line.
            self.reporter.event(
                "closed",
                f"{audit.peer}: closed by the server's shutdown" + audit.summary("stopped"),
                **self._traffic(audit, audit.started),
                **audit.fields("stopped"),
            )
            raise
        finally:
            self.active.discard(task)
            writer.close()

    async def _serve_client(
        self, audit: ConnectionAudit, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = audit.peer
        # For the PROXY header: the client's address and the one it connected to, as this socket sees them.
        addresses = (writer.get_extra_info("peername"), writer.get_extra_info("sockname"))
        try:
            sreader, swriter = await wrap_streams(
                reader,
                writer,
                server_side=True,
                handshake_timeout=self.args.handshake_timeout,
                context=server_context(self.options, self.allow),
            )
        except AccessDeniedError as exc:
            audit.identity, audit.protocol, audit.protection = exc.identity, exc.protocol, exc.protection
            who = exc.identity if exc.identity is not None else "an anonymous client"
            self.reporter.event(
                "refused",
                f"{peer}: refused {who}: no --allow matches; sent SEC_E_LOGON_DENIED" + audit.summary("refused"),
                reason="no --allow matches",
                **audit.fields("refused"),
            )
            return
        except Exception as exc:
            self.reporter.failure(
                "handshake_failed",
                f"{peer}: handshake failed",
                exc,
                suffix=audit.summary("handshake_failed"),
                **audit.fields("handshake_failed"),
            )
            return
        info = swriter.get_extra_info("negotiate_stream")
        audit.authenticated(info)
        fields = session_fields(info, time.monotonic() - audit.started)
        self.reporter.event(
            "handshake",
            f"{peer}: authenticated {info.peer_identity} ({info.protocol}, {info.protection_level.value}, "
            f"impersonation level: {info.impersonation_level}, {fields['handshake_ms']} ms)",
            peer=peer,
            **fields,
        )
        opened = time.monotonic()
        counters = audit.counters
        idle_timeout = self.args.idle_timeout or None
        try:
            if self.forward is None:
                await echo(sreader, swriter, counters, idle_timeout)
            else:
                target = await self._open_target(swriter)
                if self.args.proxy_protocol:
                    target[1].write(gateway_header(*addresses, info.peer_identity, info.protocol))
                await relay((sreader, swriter), target, counters, idle_timeout)
        except IdleTimeoutError as exc:
            self.reporter.event(
                "idle_timeout",
                f"{peer}: closed {info.peer_identity}'s connection: {exc}" + audit.summary("idle_timeout"),
                peer_identity=info.peer_identity,
                idle_seconds=idle_timeout,
                **self._traffic(audit, opened),
                **audit.fields("idle_timeout"),
            )
            return
        except Exception as exc:
            self.reporter.failure(
                "connection_failed", peer, exc, suffix=audit.summary("failed"), **audit.fields("failed")
            )
            return
        traffic = self._traffic(audit, opened)
        self.reporter.event(
            "closed",
            f"{peer}: closed after {traffic['bytes_received']} bytes received, {traffic['bytes_sent']} sent"
            + audit.summary("ok"),
            **traffic,
            **audit.fields("ok"),
        )

    async def _open_target(self, swriter: asyncio.StreamWriter) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        assert self.forward is not None
        try:
            return await asyncio.wait_for(asyncio.open_connection(*self.forward), timeout=self.args.handshake_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            swriter.close()
            raise ConnectionError(
                f"cannot reach the --forward target {self.args.forward}: {describe_error(exc)}"
            ) from exc

    @staticmethod
    def _traffic(audit: ConnectionAudit, opened: float) -> dict[str, Any]:
        # The fields these events had before the audit record (kept for existing consumers): bytes from the client
        # and back to it (echoed or relayed), seconds since the handshake.
        return {
            "bytes_received": audit.counters.up,
            "bytes_sent": audit.counters.down,
            "seconds": round(time.monotonic() - opened, 3),
        }


def _gateway_text(args: argparse.Namespace) -> str:
    allow = f", allow {' '.join(args.allow)}" if args.allow else ""
    spns = f", allowed SPNs {' '.join(args.allowed_spns)}" if args.allowed_spns else ""
    return allow + spns + (f", PROXY protocol {args.proxy_protocol}" if args.proxy_protocol else "")


async def _serve(args: argparse.Namespace, options: dict[str, Any], reporter: Reporter) -> int:
    host, port = parse_address(args.listen, what="--listen")
    state = _Server(args, options, reporter)
    server = await asyncio.start_server(state.handle, host, port)
    address = server.sockets[0].getsockname()
    reporter.event(
        "listening",
        f"listening on {format_address(address)} ({'echo' if args.echo else 'forward to ' + args.forward}, "
        f"{args.protocol}, {args.protection}{_gateway_text(args)}); stop with Ctrl-C",
        host=address[0],
        port=address[1],
        mode="echo" if args.echo else "forward",
        forward=args.forward,
        protocol=args.protocol,
        protection_level=options["protection_level"].value,
        idle_timeout=args.idle_timeout,
        allow=args.allow,
        allowed_spns=args.allowed_spns,
        proxy_protocol=args.proxy_protocol,
    )
    await serve_until_stopped(server, state.active)
    reporter.event("stopped", f"stopped after {state.accepted} connections", connections=state.accepted)
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Run the server until SIGINT/SIGTERM; returns the exit status (see ``--help``)."""
    reporter = Reporter("serve", args.json, sys.stdout)
    setup_logging(args, sys.stderr)
    try:
        if args.max_connections is not None and args.max_connections < 1:
            raise CLIUsageError("--max-connections must be at least 1")
        if not args.idle_timeout >= 0:  # also refuses nan
            raise CLIUsageError("--idle-timeout must be 0 (no limit) or a number of seconds")
        if args.proxy_protocol and not args.forward:
            raise CLIUsageError("--proxy-protocol needs --forward: the header is for the service behind the gateway")
        options = server_options(args)
        return asyncio.run(_serve(args, options, reporter))
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:
        return reporter.fatal(exc)
