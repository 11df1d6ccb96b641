"""The command-line options that several sub-commands share, defined once."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn

from .._options import DEFAULT_HANDSHAKE_TIMEOUT
from ._errors import CLIUsageError

__all__ = [
    "add_client_options",
    "add_common_options",
    "add_server_options",
    "parse_address",
]


def parse_address(text: str, *, what: str = "address") -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6addr]:PORT`` for IPv6); raise :class:`CLIUsageError` when malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise CLIUsageError(f"{what} {text!r} is not HOST:PORT (e.g. 127.0.0.1:9000 or [::1]:9000)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


def _reject_clear_password(parser: argparse.ArgumentParser) -> type[argparse.Action]:
    # A hidden option rather than none: without it argparse only calls `--password` ambiguous (a prefix of
    # --password-env and --password-file); the user who tries it should learn why it is refused and what to use.
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
    # Only one choice, kept so that command lines written with `--framing nns` still work. SASL is not offered: a
    # SASL security layer follows a handshake carried by the application protocol (an LDAP bind), which a
    # generic tunnel cannot perform.
    group.add_argument(
        "--framing",
        default="nns",
        choices=["nns"],
        help="record framing: nns (.NET NegotiateStream, MS-NNS), the only one a tunnel can carry; for a SASL "
        "security layer (e.g. LDAP) use the library (default: %(default)s)",
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
        default=DEFAULT_HANDSHAKE_TIMEOUT,
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
        "line: it comes from --password-env, --password-file, or an interactive prompt on the terminal (or, for "
        "NTLM, the account's NT hash from --nt-hash-env).",
    )
    group.add_argument("--user", metavar="USER", help="DOMAIN\\user, user@REALM or user (with --domain)")
    group.add_argument("--domain", metavar="DOMAIN", help="NTLM domain / Kerberos realm of a plain --user name")
    source = group.add_mutually_exclusive_group()
    source.add_argument("--password-env", metavar="VAR", help="read the password from environment variable VAR")
    source.add_argument("--password-file", metavar="FILE", help="read the password from the first line of FILE")
    # An environment variable only, like --password-env: the hash is as good as the password, so it must not sit
    # on the command line (ps, shell history) either.
    source.add_argument(
        "--nt-hash-env",
        metavar="VAR",
        help="NTLM only: authenticate with the account's NT hash (32 hex digits) read from environment variable "
        "VAR instead of a password",
    )
    group.add_argument("--ccache", metavar="CCACHE", help="use this Kerberos credential cache (e.g. FILE:/tmp/cc)")
    group.add_argument("--keytab", metavar="FILE", help="client keytab to get a ticket for --user from")
    group.add_argument(
        "--require-mutual-auth", action="store_true", help="fail unless the server proves its identity (Kerberos)"
    )
    group.add_argument("--no-ntlm-fallback", action="store_true", help="with negotiate: refuse to fall back to NTLM")
    group.add_argument(
        "--delegate",
        action="store_true",
        help="Kerberos only: forward your ticket so the server can act as you on other hosts (needs a forwardable "
        "ticket, kinit -f); the handshake fails if the ticket cannot be forwarded or NTLM is negotiated",
    )


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
    # No channel-binding policy option: the command has no TLS, so there is no channel for a client to bind to.
    group.add_argument(
        "--allowed-spn",
        action="append",
        dest="allowed_spns",
        metavar="SPN",
        help="answer only to this service name (repeatable): the client's NTLM target name or the service of its "
        "Kerberos ticket must be one of them, ignoring case; others are refused with ERROR_TRUST_FAILURE "
        "(default: any)",
    )
