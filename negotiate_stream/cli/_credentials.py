"""From parsed arguments to context options: credentials, and where a client's password (or NT hash) comes from."""

from __future__ import annotations

import argparse
import getpass
import os
import string
import sys
from typing import Any

from .._options import Credentials, ProtectionLevel
from ._errors import CLIUsageError

__all__ = ["client_options", "server_options"]


def _common_options(args: argparse.Namespace) -> dict[str, Any]:
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


def _read_nt_hash(args: argparse.Namespace) -> str:
    """The NT hash in ``--nt-hash-env``'s variable, checked here so that a bad one is a usage error.

    No message quotes the value: even a malformed one may be most of a real hash.
    """
    variable = args.nt_hash_env
    if args.protocol == "kerberos" or args.no_ntlm_fallback:
        raise CLIUsageError(
            "--nt-hash-env authenticates with NTLM only: use --protocol ntlm, or negotiate without --no-ntlm-fallback"
        )
    if args.ccache or args.keytab:
        raise CLIUsageError("--nt-hash-env replaces the password: give it without --ccache or --keytab")
    if args.delegate:
        raise CLIUsageError("--delegate needs Kerberos, and an NT hash authenticates with NTLM only")
    value = os.environ.get(variable)
    if value is None:
        raise CLIUsageError(f"--nt-hash-env: environment variable {variable} is not set")
    value = value.strip()  # whitespace is never part of a hash: a value pasted with its newline still works
    if not value:
        raise CLIUsageError(f"--nt-hash-env: environment variable {variable} is empty")
    if len(value) != 32 or not set(value) <= set(string.hexdigits):
        raise CLIUsageError(
            f"--nt-hash-env: environment variable {variable} does not hold an NT hash (32 hexadecimal digits)"
        )
    return value


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~negotiate_stream.ContextOptions` of an initiator, from parsed arguments.

    Raises :class:`~negotiate_stream.cli._errors.CLIUsageError` for an unusable combination; may prompt for a
    password on the terminal.
    """
    options = _common_options(args)
    if args.user is None and (args.password_env or args.password_file):
        raise CLIUsageError("--password-env/--password-file need --user")
    if args.keytab and args.user is None:
        raise CLIUsageError("--keytab needs --user (the principal to get a ticket for)")
    if args.nt_hash_env and args.user is None:
        raise CLIUsageError("--nt-hash-env needs --user (the account the NT hash belongs to)")
    if args.delegate and args.protocol == "ntlm":
        raise CLIUsageError("--delegate needs Kerberos: NTLM cannot delegate (use --protocol kerberos or negotiate)")
    if args.user is not None:
        domain, sep, user = args.user.partition("\\")
        username, user_domain = (user, domain) if sep else (args.user, args.domain)
        if args.nt_hash_env:
            credentials = Credentials(username=username, domain=user_domain, nt_hash=_read_nt_hash(args))
        else:
            credentials = Credentials(
                username=username,
                password=_read_password(args),
                domain=user_domain,
                ccache=args.ccache,
                keytab=args.keytab,
            )
        options["credentials"] = credentials
    elif args.ccache:
        options["credentials"] = Credentials(ccache=args.ccache)
    if args.require_mutual_auth:
        options["require_mutual_auth"] = True
    if args.no_ntlm_fallback:
        options["allow_ntlm_fallback"] = False
    if args.delegate:
        options["delegate"] = True
    return options


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~negotiate_stream.ContextOptions` of an acceptor, from parsed arguments.

    Raises :class:`~negotiate_stream.cli._errors.CLIUsageError` when a credential file cannot be read, or an NTLM
    server has no accounts: better at start-up than at the first client's handshake.
    """
    options = _common_options(args)
    for flag, path in (("--users-file", args.users_file), ("--keytab", args.keytab)):
        if path is not None and not os.access(path, os.R_OK):
            raise CLIUsageError(f"{flag}: cannot read {path}")
    if args.users_file or args.keytab:
        options["credentials"] = Credentials(ntlm_user_file=args.users_file, keytab=args.keytab)
    if args.allowed_spns:
        options["allowed_spns"] = list(args.allowed_spns)
    if args.protocol == "ntlm" and "credentials" not in options and not os.environ.get("NTLM_USER_FILE"):
        raise CLIUsageError("an NTLM server needs accounts: give --users-file FILE (or set NTLM_USER_FILE)")
    return options
