"""What the commands tell people and scripts: events as text or JSON lines, the ``-v`` trace, fatal errors."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

from .. import SessionInfo
from ..errors import status_name
from ._errors import describe_error, exit_code_for, root_cause
from ._relay import Counters

__all__ = ["ConnectionAudit", "Reporter", "format_address", "session_fields", "setup_logging"]


class _JSONFormatter(logging.Formatter):
    # With --json every line on the stream must parse, the library's trace lines included.
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

    def failure(self, name: str, prefix: str, exc: BaseException, *, suffix: str = "", **fields: Any) -> None:
        """Report a per-connection failure ``exc`` as event ``name``: ``"<prefix>: <reason> (<ErrorClass>)<suffix>"``,
        or its error class, status name, message and the exit code it would map to (all of the root cause, see
        :func:`_error_fields`)."""
        error = _error_fields(exc)
        self.event(name, f"{prefix}: {error['message']} ({error['error']}){suffix}", **error, **fields)

    def fatal(self, exc: BaseException) -> int:
        """Report a fatal error in one line; return its exit code."""
        error = _error_fields(exc)
        if self.json_output:
            self.event("error", error["message"], **error)
        if not self.json_output or self.json_stream is not self.human:
            self.human.write(f"negotiate-stream {self.command}: {error['message']}\n")
            self.human.flush()
        code: int = error["exit_code"]
        return code


def _error_fields(exc: BaseException) -> dict[str, Any]:
    """``error`` (class name), ``status`` (SEC_E name or None), ``message`` and ``exit_code`` of ``exc``.

    A :class:`~negotiate_stream.errors.BrokenStreamError` is reported as the error that broke the stream (its
    ``__cause__``), e.g. ``IntegrityError`` and ``SEC_E_MESSAGE_ALTERED``: that one says what happened.
    """
    cause = root_cause(exc)
    status = getattr(cause, "status", None)
    return {
        "error": type(cause).__name__,
        "status": status_name(status) if isinstance(status, int) else None,
        "message": describe_error(cause),
        "exit_code": exit_code_for(cause),
    }


def session_fields(info: SessionInfo, handshake_seconds: float) -> dict[str, Any]:
    """JSON-ready fields of a :class:`~negotiate_stream.SessionInfo` (no secrets: names and flags only)."""
    return {
        "protocol": info.protocol,
        "protection_level": info.protection_level.value,
        "peer_identity": info.peer_identity,
        "mutually_authenticated": info.mutually_authenticated,
        "encrypted": info.is_encrypted,
        "signed": info.is_signed,
        "impersonation_level": info.impersonation_level,
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
class ConnectionAudit:
    """What ``serve`` knows about one connection, for its audit fields: filled in as the connection goes.

    Every connection ends with exactly one event carrying :meth:`fields` (the JSON audit record, schema in
    ``docs/cli.md``) and, in text, ending with :meth:`summary`.
    """

    peer: str
    started: float = field(default_factory=time.monotonic)
    identity: str | None = None
    protocol: str | None = None
    protection: str | None = None
    counters: Counters = field(default_factory=Counters)

    def authenticated(self, info: SessionInfo) -> None:
        """Record the session of a completed handshake."""
        self.identity = info.peer_identity
        self.protocol = info.protocol
        self.protection = info.protection_level.value

    def fields(self, outcome: str) -> dict[str, Any]:
        """The audit record: who (``identity``, ``peer``), how (``protocol``, ``protection``), how much
        (``bytes_up`` from the client, ``bytes_down`` to it), how long (``duration_ms`` since the connection was
        accepted) and how it ended (``outcome``)."""
        return {
            "identity": self.identity,
            "peer": self.peer,
            "protocol": self.protocol,
            "protection": self.protection,
            "bytes_up": self.counters.up,
            "bytes_down": self.counters.down,
            "duration_ms": round((time.monotonic() - self.started) * 1000, 1),
            "outcome": outcome,
        }

    def summary(self, outcome: str) -> str:
        """The audit record for people, to end the connection's last text line:
        ``" [ok: DOMAIN\\user, ntlm, encrypt_and_sign, 5 B up, 5 B down, 12.3 ms]"``."""
        record = self.fields(outcome)
        who = ", ".join(str(record[key] or "-") for key in ("identity", "protocol", "protection"))
        return (
            f" [{outcome}: {who}, {record['bytes_up']} B up, {record['bytes_down']} B down, {record['duration_ms']} ms]"
        )
