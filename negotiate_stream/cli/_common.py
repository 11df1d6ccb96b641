"""What ``serve`` and ``connect`` share: options, credentials, event output, exit codes and the byte relay.

Exit codes (documented in ``docs/cli.md``; one per error class so scripts can branch on them):

====  ==========================================================================================================
code  meaning
====  ==========================================================================================================
0     success (``serve`` and ``connect --local``: stopped by SIGINT/SIGTERM)
1     unexpected internal error (a bug: please report it with the ``-v`` output)
2     usage error: bad option, missing password source, unsupported combination (argparse also exits 2)
3     authentication failed: credentials rejected, protection level or mutual auth refused, peer's error frame
4     remote protocol error: malformed frame, truncated stream, record that failed its integrity check
5     connection error: connection refused/reset, address in use, host unreachable, connect or handshake timeout
130   interrupted by SIGINT before the work was done (``connect`` in stdin/stdout mode)
====  ==========================================================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, NoReturn

from .._context import Credentials, ProtectionLevel
from ..errors import (
    AuthenticationError,
    BrokenStreamError,
    ContextExpiredError,
    HandshakeTimeoutError,
    RemoteProtocolError,
    status_name,
)

__all__ = [
    "EXIT_AUTHENTICATION",
    "EXIT_CONNECTION",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PROTOCOL",
    "EXIT_USAGE",
    "CLIUsageError",
    "Counters",
    "Reporter",
    "add_client_options",
    "add_common_options",
    "add_server_options",
    "client_options",
    "echo",
    "exit_code_for",
    "parse_address",
    "relay",
    "server_options",
    "setup_logging",
]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_AUTHENTICATION = 3
EXIT_PROTOCOL = 4
EXIT_CONNECTION = 5
EXIT_INTERRUPTED = 130

#: Bytes read per relay step: four full MS-NNS records, so one write protects and sends several records at once.
RELAY_CHUNK = 4 * 0xFC00

EXIT_CODES_HELP = """exit codes:
  0 success            1 internal error (bug)       2 usage error
  3 authentication failed (credentials, protection level, peer's error frame)
  4 remote protocol error (malformed, truncated or tampered record)
  5 connection error or timeout (refused, reset, unreachable, address in use)"""


class CLIUsageError(Exception):
    """A command-line mistake found after argument parsing (missing password source, unreadable file, ...)."""


def parse_address(text: str, *, what: str = "address") -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6addr]:PORT`` for IPv6); raise :class:`CLIUsageError` when malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise CLIUsageError(f"{what} {text!r} is not HOST:PORT (e.g. 127.0.0.1:9000 or [::1]:9000)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


def _reject_clear_password(parser: argparse.ArgumentParser) -> type[argparse.Action]:
    class RejectPassword(argparse.Action):
        def __call__(
            self,
            parser_: argparse.ArgumentParser,
            namespace: argparse.Namespace,
            values: str | Sequence[Any] | None,
            option_string: str | None = None,
        ) -> NoReturn:
            parser.error(
                "--password is not accepted: a password on the command line is visible to other users (ps, shell "
                "history); use --password-env VAR, --password-file FILE, or let the command prompt for it"
            )

    return RejectPassword


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Add the options every network command takes (protocol, protection, framing, output)."""
    group = parser.add_argument_group("security context")
    group.add_argument(
        "--protocol",
        default="negotiate",
        choices=["negotiate", "ntlm", "kerberos"],
        help="SPNEGO (Kerberos, else NTLM), raw NTLM or Kerberos only (default: %(default)s)",
    )
    group.add_argument(
        "--protection",
        default="encrypt",
        choices=["encrypt", "sign", "none", "encrypt_and_sign"],
        metavar="{encrypt,sign,none}",
        help="protection of each record: encrypt (= EncryptAndSign), sign (integrity only, readable on the wire) "
        "or none (authenticate only, raw bytes afterwards). Server: the minimum accepted (default: %(default)s)",
    )
    group.add_argument(
        "--framing",
        default="nns",
        choices=["nns", "sasl"],
        help="record framing: nns (.NET NegotiateStream, MS-NNS). sasl is refused by serve/connect because a SASL "
        "security layer follows a handshake carried by the application protocol (e.g. an LDAP bind); use the "
        "library for it (default: %(default)s)",
    )
    group.add_argument(
        "--target",
        metavar="SPN",
        help="service principal name, service/host (client default: host/<HOST>; server default: host/localhost)",
    )
    group.add_argument(
        "--ntlm-seal-sign-only",
        action="store_true",
        help="with --protection sign and NTLM: seal records as .NET on Linux/macOS (gss-ntlmssp) does",
    )
    group.add_argument(
        "--handshake-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="give up on a TCP connect or handshake after this long (default: %(default)s)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "-v", "--verbose", action="store_true", help="trace each handshake step (message ids, token sizes, flags)"
    )
    output.add_argument("--json", action="store_true", help="write events as JSON lines (one object per line)")
    parser.add_argument("--password", nargs="?", help=argparse.SUPPRESS, action=_reject_clear_password(parser))


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """Add the initiator credential options (``--user`` and where its password comes from, ``--ccache``...)."""
    group = parser.add_argument_group(
        "client credentials",
        "Without --user, the current Kerberos ticket cache is used. A password is never taken from the command "
        "line: it comes from --password-env, --password-file, or an interactive prompt on the terminal.",
    )
    group.add_argument("--user", metavar="USER", help="DOMAIN\\user, user@REALM or user (with --domain)")
    group.add_argument("--domain", metavar="DOMAIN", help="NTLM domain / Kerberos realm of a plain --user name")
    source = group.add_mutually_exclusive_group()
    source.add_argument("--password-env", metavar="VAR", help="read the password from environment variable VAR")
    source.add_argument("--password-file", metavar="FILE", help="read the password from the first line of FILE")
    group.add_argument("--ccache", metavar="CCACHE", help="use this Kerberos credential cache (e.g. FILE:/tmp/cc)")
    group.add_argument("--keytab", metavar="FILE", help="client keytab to get a ticket for --user from")
    group.add_argument(
        "--require-mutual-auth", action="store_true", help="fail unless the server proves its identity (Kerberos)"
    )
    group.add_argument("--no-ntlm-fallback", action="store_true", help="with negotiate: refuse to fall back to NTLM")


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """Add the acceptor credential options (NTLM user file, keytab)."""
    group = parser.add_argument_group(
        "server credentials",
        "Default: the NTLM_USER_FILE and KRB5_KTNAME environment variables, as gss-ntlmssp and MIT Kerberos do.",
    )
    group.add_argument(
        "--users-file",
        metavar="FILE",
        help="NTLM accounts: lines DOMAIN:USER:PASSWORD or smbpasswd-style hashes "
        "(negotiate_stream._context.write_ntlm_user_file writes hashed ones)",
    )
    group.add_argument("--keytab", metavar="FILE", help="Kerberos acceptor keytab")


def _check_common(args: argparse.Namespace) -> dict[str, Any]:
    if args.framing == "sasl":
        raise CLIUsageError(
            "--framing sasl is not supported by serve/connect: SASL security layers run after a handshake that "
            "the application protocol carries (e.g. an LDAP SASL bind), which a generic tunnel cannot do; use "
            "--framing nns, or the library (see docs/howto-ldap.md)"
        )
    if args.handshake_timeout <= 0:
        raise CLIUsageError("--handshake-timeout must be a positive number of seconds")
    options: dict[str, Any] = {
        "protocol": args.protocol,
        "protection_level": ProtectionLevel.parse(args.protection),
    }
    if args.ntlm_seal_sign_only:
        options["ntlm_seal_sign_only"] = True
    if args.target:
        options["target"] = args.target
    return options


def _read_password(args: argparse.Namespace) -> str | None:
    if args.password_env:
        value = os.environ.get(args.password_env)
        if value is None:
            raise CLIUsageError(f"--password-env: environment variable {args.password_env} is not set")
        return value
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as handle:
                return handle.readline().rstrip("\r\n")
        except OSError as exc:
            raise CLIUsageError(f"--password-file: cannot read {args.password_file}: {exc.strerror}") from None
    if args.ccache or args.keytab:
        return None
    # getpass falls back to reading stdin when there is no terminal; stdin is our data, so demand a terminal.
    if sys.platform != "win32":
        try:
            os.close(os.open("/dev/tty", os.O_RDWR))
        except OSError:
            raise CLIUsageError(
                f"no password for {args.user!r}: there is no terminal to prompt on; use --password-env VAR or "
                "--password-file FILE"
            ) from None
    return getpass.getpass(f"password for {args.user}: ")


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~negotiate_stream.ContextOptions` of an initiator, from parsed arguments.

    Raises :class:`CLIUsageError` for an unusable combination; may prompt for a password on the terminal.
    """
    options = _check_common(args)
    if args.user is None and (args.password_env or args.password_file):
        raise CLIUsageError("--password-env/--password-file need --user")
    if args.keytab and args.user is None:
        raise CLIUsageError("--keytab needs --user (the principal to get a ticket for)")
    if args.user is not None:
        domain, sep, user = args.user.partition("\\")
        username, user_domain = (user, domain) if sep else (args.user, args.domain)
        options["credentials"] = Credentials(
            username=username,
            password=_read_password(args),
            domain=user_domain,
            ccache=args.ccache,
            keytab=args.keytab,
        )
    elif args.ccache:
        options["credentials"] = Credentials(ccache=args.ccache)
    if args.require_mutual_auth:
        options["require_mutual_auth"] = True
    if args.no_ntlm_fallback:
        options["allow_ntlm_fallback"] = False
    return options


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~negotiate_stream.ContextOptions` of an acceptor, from parsed arguments."""
    options = _check_common(args)
    for flag, path in (("--users-file", args.users_file), ("--keytab", args.keytab)):
        if path is not None and not os.access(path, os.R_OK):
            raise CLIUsageError(f"{flag}: cannot read {path}")
    if args.users_file or args.keytab:
        options["credentials"] = Credentials(ntlm_user_file=args.users_file, keytab=args.keytab)
    return options


def exit_code_for(exc: BaseException) -> int:
    """The exit code of the error class of ``exc`` (see the module docstring)."""
    if isinstance(exc, BrokenStreamError) and exc.__cause__ is not None:
        return exit_code_for(exc.__cause__)
    if isinstance(exc, CLIUsageError):
        return EXIT_USAGE
    if isinstance(exc, HandshakeTimeoutError | TimeoutError | OSError):
        return EXIT_CONNECTION
    if isinstance(exc, AuthenticationError | ContextExpiredError):
        return EXIT_AUTHENTICATION
    if isinstance(exc, RemoteProtocolError | BrokenStreamError):
        return EXIT_PROTOCOL
    return EXIT_INTERNAL


def describe_error(exc: BaseException) -> str:
    """A one-line reason: the error class in words, then the message (no newlines)."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError) and not str(exc):
        text = "timed out"
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    kind = {
        EXIT_USAGE: "usage error",
        EXIT_AUTHENTICATION: "authentication failed",
        EXIT_PROTOCOL: "protocol error",
        EXIT_CONNECTION: "connection error",
    }.get(exit_code_for(exc), f"internal error ({type(exc).__name__})")
    text = " ".join(text.split())
    return text if text.startswith(kind) else f"{kind}: {text}"


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"event": "log", "level": record.levelname, "message": record.getMessage()})


def setup_logging(args: argparse.Namespace, stream: IO[str]) -> None:
    """Send the ``negotiate_stream`` logger to ``stream``: DEBUG with ``-v``, else warnings only."""
    logger = logging.getLogger("negotiate_stream")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_JSONFormatter() if args.json else logging.Formatter("negotiate-stream: %(message)s"))
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG if args.verbose else logging.WARNING)


@dataclass
class Reporter:
    """Writes events: a human line on ``human`` (stderr), or with ``--json`` one JSON object per line on ``json``.

    ``fatal()`` always reaches stderr in plain words, except when stderr is the JSON stream (every line on it must
    stay JSON).
    """

    command: str
    json_output: bool
    json_stream: IO[str]
    human: IO[str] = field(default_factory=lambda: sys.stderr)

    def event(self, name: str, text: str, **fields: Any) -> None:
        """Report event ``name``: ``text`` for people, ``fields`` (plus ``event`` and ``time``) for scripts."""
        if self.json_output:
            record = {"event": name, "time": round(time.time(), 3), **fields}
            self.json_stream.write(json.dumps(record, default=str) + "\n")
            self.json_stream.flush()
        else:
            self.human.write(f"{self.command}: {text}\n")
            self.human.flush()

    def failure(self, name: str, prefix: str, exc: BaseException, **fields: Any) -> None:
        """Report a per-connection failure ``exc`` as event ``name``: ``"<prefix>: <reason>"`` plus its error
        class, message and the exit code it would map to."""
        reason = describe_error(exc)
        self.event(
            name,
            f"{prefix}: {reason}",
            error=type(exc).__name__,
            message=reason,
            exit_code=exit_code_for(exc),
            **fields,
        )

    def fatal(self, exc: BaseException) -> int:
        """Report a fatal error in one line; return its exit code."""
        code = exit_code_for(exc)
        reason = describe_error(exc)
        if self.json_output:
            status = getattr(exc, "status", None)
            self.event(
                "error",
                reason,
                error=type(exc).__name__,
                status=status_name(status) if isinstance(status, int) else None,
                message=reason,
                exit_code=code,
            )
        if not self.json_output or self.json_stream is not self.human:
            self.human.write(f"negotiate-stream {self.command}: {reason}\n")
            self.human.flush()
        return code


def session_fields(info: Any, handshake_seconds: float) -> dict[str, Any]:
    """JSON-ready fields of a :class:`~negotiate_stream.SessionInfo` (no secrets: names and flags only)."""
    return {
        "protocol": info.protocol,
        "protection_level": info.protection_level.value,
        "peer_identity": info.peer_identity,
        "mutually_authenticated": info.mutually_authenticated,
        "encrypted": info.is_encrypted,
        "signed": info.is_signed,
        "framing": info.framing,
        "handshake_ms": round(handshake_seconds * 1000, 1),
    }


def format_address(address: Any) -> str:
    """``host:port`` of a socket address tuple (``[v6]:port`` for IPv6)."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


@dataclass
class Counters:
    """Bytes relayed in each direction (``up``: towards the protected peer or the forward target)."""

    up: int = 0
    down: int = 0


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: Callable[[int], None]) -> None:
    while data := await reader.read(RELAY_CHUNK):
        writer.write(data)
        count(len(data))
        await writer.drain()
    # Propagate the half-close: the far side sees EOF at a record boundary, a clean end of stream.
    if writer.can_write_eof() and not writer.is_closing():
        writer.write_eof()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counters: Counters) -> None:
    """Send everything read back to the same peer until EOF, half-close, then close; counts ``counters.up``."""

    def up(n: int) -> None:
        counters.up += n

    try:
        await _pump(reader, writer, up)
    finally:
        writer.close()


async def relay(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    counters: Counters,
) -> None:
    """Copy a -> b and b -> a until both directions reached EOF; half-closes are passed on; closes both.

    The first failure in either direction (a tampered record, a reset) stops both and is raised.
    """

    def up(n: int) -> None:
        counters.up += n

    def down(n: int) -> None:
        counters.down += n

    tasks = [asyncio.ensure_future(_pump(a[0], b[1], up)), asyncio.ensure_future(_pump(b[0], a[1], down))]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        for _, writer in (a, b):
            writer.close()
