"""Scenario descriptions, selection with ``--only``, and the shared per-run context."""

from __future__ import annotations

import fnmatch
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..testing import NTLMUsers
from ._core import BenchConfig, Result

__all__ = ["Context", "Scenario", "select"]


@dataclass
class Context:
    """What every scenario of one run shares: the sizes, the NTLM accounts, lazily made TLS contexts."""

    config: BenchConfig
    users: NTLMUsers
    _tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = field(default=None, repr=False)

    def tls_contexts(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        """(server, client) SSLContexts for a self-signed ``localhost`` certificate, made once per run."""
        if self._tls is None:
            from ._asyncio_plain import make_tls_contexts

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
    chosen = [s for s in scenarios if not selectors or any(matches(s.name, sel) for sel in selectors)]
    return chosen
