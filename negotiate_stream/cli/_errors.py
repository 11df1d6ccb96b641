"""Exit codes of ``serve`` and ``connect``, and how an error becomes one (code and one-line reason).

Exit codes (documented in ``docs/cli.md``; one per error class so scripts can branch on them):

====  ==========================================================================================================
code  meaning
====  ==========================================================================================================
0     success (``serve`` and ``connect --local``: stopped by SIGINT/SIGTERM)
1     unexpected internal error (a bug: please report it with the ``-v`` output)
2     usage error: bad option, missing password source, unsupported combination (argparse also exits 2)
3     authentication failed: credentials rejected, protection level or mutual auth refused, peer's error frame
4     remote protocol error: malformed frame or handshake token, truncated stream, record that failed its
      integrity check
5     connection error: connection refused/reset, address in use, host unreachable, connect or handshake timeout
130   interrupted by SIGINT before the work was done (``connect`` in stdin/stdout mode)
====  ==========================================================================================================
"""

from __future__ import annotations

import asyncio

from ..errors import (
    AuthenticationError,
    BrokenStreamError,
    ContextExpiredError,
    HandshakeTimeoutError,
    RemoteProtocolError,
)

__all__ = [
    "EXIT_AUTHENTICATION",
    "EXIT_CODES_HELP",
    "EXIT_CONNECTION",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PROTOCOL",
    "EXIT_USAGE",
    "CLIUsageError",
    "describe_error",
    "exit_code_for",
    "root_cause",
]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_AUTHENTICATION = 3
EXIT_PROTOCOL = 4
EXIT_CONNECTION = 5
EXIT_INTERRUPTED = 130

#: The exit-code summary that ends the ``--help`` of ``serve`` and ``connect``.
EXIT_CODES_HELP = """exit codes:
  0 success            1 internal error (bug)       2 usage error
  3 authentication failed (credentials, protection level, peer's error frame)
  4 remote protocol error (malformed token, malformed, truncated or tampered record)
  5 connection error or timeout (refused, reset, unreachable, address in use)"""


class CLIUsageError(Exception):
    """A command-line mistake found after argument parsing (missing password source, unreadable file, ...)."""


def root_cause(exc: BaseException) -> BaseException:
    """The error that broke the stream when ``exc`` is a :class:`BrokenStreamError` (its ``__cause__`` chain);
    ``exc`` itself otherwise.

    A broken stream only repeats an earlier failure, and which call meets it first (often the write of data that
    arrived before a tampered record) is chance: the cause is what says what happened and whose fault it was.
    """
    while isinstance(exc, BrokenStreamError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def exit_code_for(exc: BaseException) -> int:
    """The exit code of the error class of ``exc``'s :func:`root_cause` (see the module docstring)."""
    exc = root_cause(exc)
    if isinstance(exc, CLIUsageError):
        return EXIT_USAGE
    if isinstance(exc, HandshakeTimeoutError | TimeoutError | OSError):
        return EXIT_CONNECTION
    # Before AuthenticationError: a handshake token that is not a Negotiate message is both, and the peer's fault.
    if isinstance(exc, RemoteProtocolError | BrokenStreamError):
        return EXIT_PROTOCOL
    if isinstance(exc, AuthenticationError | ContextExpiredError):
        return EXIT_AUTHENTICATION
    return EXIT_INTERNAL


_KINDS = {
    EXIT_USAGE: "usage error",
    EXIT_AUTHENTICATION: "authentication failed",
    EXIT_PROTOCOL: "protocol error",
    EXIT_CONNECTION: "connection error",
}


def describe_error(exc: BaseException) -> str:
    """A one-line reason: the error class in words, then the message (no newlines).

    For a :class:`BrokenStreamError` it is the reason of its :func:`root_cause`.
    """
    exc = root_cause(exc)
    if isinstance(exc, asyncio.TimeoutError | TimeoutError) and not str(exc):
        text = "timed out"
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    kind = _KINDS.get(exit_code_for(exc), f"internal error ({type(exc).__name__})")
    text = " ".join(text.split())
    return text if text.startswith(kind) else f"{kind}: {text}"
