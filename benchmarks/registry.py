"""Scenario descriptions, selection with ``--only``, the shared per-run context and the NTLM options of each side."""

from __future__ import annotations

import fnmatch
import functools
import importlib
import ssl
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar

from negotiate_stream import ProtectionLevel
from negotiate_stream.testing import NTLMUsers

from .config import BenchConfig
from .results import Result

__all__ = [
    "APIS",
    "LEVELS",
    "Context",
    "Scenario",
    "Unavailable",
    "matches",
    "options",
    "per_level",
    "require",
    "select",
    "unit_of",
]

T = TypeVar("T")

#: The protection levels of the scenario names.
LEVELS = {"sealed": ProtectionLevel.ENCRYPT_AND_SIGN, "sign": ProtectionLevel.SIGN, "none": ProtectionLevel.NONE}
#: Our adapters, as they appear in the scenario names (``ours.<api>.<kind>.<level>``).
APIS = ("asyncio-protocol", "asyncio-streams", "anyio-asyncio", "anyio-trio", "sync")


@dataclass
class Context:
    """What every scenario of one run shares: the sizes, the NTLM accounts, lazily made TLS contexts and other
    resources started once per run (the Kerberos realm), which :meth:`close` stops."""

    config: BenchConfig
    users: NTLMUsers
    _tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = field(default=None, repr=False)
    _shared: dict[str, Any] = field(default_factory=dict, repr=False)
    _resources: ExitStack = field(default_factory=ExitStack, repr=False)

    def shared(self, key: str, start: Callable[[], AbstractContextManager[T]]) -> T:
        """The resource ``key``, entered from ``start()`` by the first scenario that asks and left by :meth:`close`.

        A start that raises is not retried by later scenarios: they get the same exception (a realm that failed to
        start once would only fail again, slowly).
        """
        if key not in self._shared:
            try:
                self._shared[key] = self._resources.enter_context(start())
            except Exception as exc:
                self._shared[key] = exc
        value = self._shared[key]
        if isinstance(value, Exception):
            raise value
        resource: T = value
        return resource

    def close(self) -> None:
        """Stop every resource :meth:`shared` started (in reverse order)."""
        self._resources.close()

    def tls_contexts(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        """(server, client) SSLContexts for a self-signed ``localhost`` certificate, made once per run."""
        if self._tls is None:
            from .loopback import make_tls_contexts

            self._tls = make_tls_contexts()
        return self._tls


@dataclass(frozen=True)
class Scenario:
    """One measurement; ``isolated`` ones run in a fresh child process (their RSS figures need a clean heap)."""

    name: str
    group: str
    kind: str
    level: str
    run: Callable[[Context], Result]
    isolated: bool = False


def per_level(
    name: str, group: str, kind: str, run: Callable[..., Result], keyword: str = "level_name"
) -> list[Scenario]:
    """A sealed and a sign-only scenario: ``{level}`` in ``name`` filled in, ``run`` given the level as ``keyword``."""
    return [
        Scenario(name.format(level=level), group, kind, level, functools.partial(run, **{keyword: level}))
        for level in ("sealed", "sign")
    ]


class Unavailable(Exception):
    """A scenario cannot run here (a module or an optional package is missing): it is reported as skipped."""


def require(module: str) -> Any:
    """Import ``module`` or raise :class:`Unavailable`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Unavailable(f"{module} is not importable ({exc})") from exc


def unit_of(kind: str) -> str:
    """The unit of a scenario's headline number (shown for skipped and failed scenarios too)."""
    if kind.endswith("pingpong"):
        return "round trips/s"
    if kind.startswith("crypto-"):  # one message at a time: crypto-small, crypto-kerberos
        return "messages/s"
    return "handshakes/s" if kind == "handshake" else "MB/s"


def options(ctx: Context, level: str, server_side: bool) -> dict[str, Any]:
    """The adapter keyword options (ContextOptions) of one side: NTLM, ``level``, the run's test account."""
    users = ctx.users
    return {
        "credentials": users.server_credentials() if server_side else users.client_credentials(),
        "protocol": "ntlm",
        "protection_level": LEVELS[level],
    }


def matches(name: str, selector: str) -> bool:
    """True when ``selector`` picks scenario ``name``.

    A selector is a full name, a dotted prefix (``ours.sync``), one dotted component (``pingpong``, ``sealed``,
    ``anyio-trio``), the first word of a component (``tls`` for ``tls-streams``, ``anyio`` for ``anyio-trio``) or
    a glob (``*tls*``).
    """
    selector = selector.strip()
    if not selector:
        return False
    if any(ch in selector for ch in "*?["):
        return fnmatch.fnmatchcase(name, selector)
    if name == selector or name.startswith(selector + "."):
        return True
    return any(part == selector or part.startswith(selector + "-") for part in name.split("."))


def select(scenarios: Iterable[Scenario], only: Iterable[str] | None) -> list[Scenario]:
    """The scenarios picked by any of the ``only`` selectors (all when ``only`` is empty or None)."""
    selectors = [s for s in (only or []) if s.strip()]
    return [s for s in scenarios if not selectors or any(matches(s.name, sel) for sel in selectors)]
