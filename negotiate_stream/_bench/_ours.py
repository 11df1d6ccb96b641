"""Scenarios of our adapters (asyncio Protocol, asyncio streams, anyio on asyncio and trio, blocking sockets),
and of the user's alternative (jetblack-negotiate-stream) when it is importable."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

from .._context import ProtectionLevel
from ._core import Result
from ._registry import Context, Scenario

__all__ = ["alternative_scenarios", "our_scenarios"]

LEVELS = {"sealed": ProtectionLevel.ENCRYPT_AND_SIGN, "sign": ProtectionLevel.SIGN, "none": ProtectionLevel.NONE}
APIS = ("asyncio-protocol", "asyncio-streams", "anyio-asyncio", "anyio-trio", "sync")
_MODULES = {
    "asyncio-protocol": "negotiate_stream.asyncio_",
    "asyncio-streams": "negotiate_stream.asyncio_",
    "anyio-asyncio": "negotiate_stream.anyio_",
    "anyio-trio": "negotiate_stream.anyio_",
    "sync": "negotiate_stream.sync",
}


class Unavailable(Exception):
    """A scenario cannot run here (a module or an optional package is missing)."""


def options(ctx: Context, level: str, server_side: bool) -> dict[str, Any]:
    """The adapter keyword options (ContextOptions) of one side: NTLM, ``level``, the run's test account."""
    users = ctx.users
    return {
        "credentials": users.server_credentials() if server_side else users.client_credentials(),
        "protocol": "ntlm",
        "protection_level": LEVELS[level],
    }


def require(module: str) -> Any:
    """Import ``module`` or raise :class:`Unavailable` (reported as a skipped scenario)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Unavailable(f"{module} is not importable ({exc})") from exc


def _guard(
    name: str, group: str, kind: str, level: str, func: Callable[[Context], Result]
) -> Callable[[Context], Result]:
    def run(ctx: Context) -> Result:
        try:
            return func(ctx)
        except Unavailable as exc:
            unit = {"pingpong": "round trips/s", "handshake": "handshakes/s"}.get(kind, "MB/s")
            return Result(name, group, kind, level=level, unit=unit, status=f"skipped: {exc}")

    return run


def our_scenarios() -> list[Scenario]:
    """Every scenario of our adapters, in report order."""
    from . import _ours_impl as impl

    scenarios: list[Scenario] = []

    def add(name: str, kind: str, level: str, func: Callable[[Context], Result], isolated: bool = False) -> None:
        scenarios.append(Scenario(name, "ours", kind, level, _guard(name, "ours", kind, level, func), isolated))

    from ._reference import reference_bulk

    for level in ("sealed", "sign"):
        name = f"reference.connection-protocol.bulk.{level}"
        scenarios.append(Scenario(name, "reference", "bulk", level, functools.partial(reference_bulk, level=level)))
    for level in ("sealed", "sign", "none"):
        for api in APIS:
            add(f"ours.{api}.bulk.{level}", "bulk", level, functools.partial(impl.bulk, api=api, level=level))
    for level in ("sealed", "none"):
        for api in APIS:
            add(
                f"ours.{api}.pingpong.{level}",
                "pingpong",
                level,
                functools.partial(impl.pingpong, api=api, level=level),
            )
    for api in ("asyncio-protocol", "asyncio-streams"):
        add(f"ours.{api}.handshake", "handshake", "sealed", functools.partial(impl.handshakes, api=api))
    for index, size in enumerate(("small", "large")):
        name = f"baseline.asyncio-streams.concurrent.{size}"
        func = _guard(name, "baseline", "concurrent", "-", functools.partial(impl.concurrent, index=index, plain=True))
        scenarios.append(Scenario(name, "baseline", "concurrent", "-", func, isolated=True))
        add(
            f"ours.asyncio-streams.concurrent.{size}",
            "concurrent",
            "sealed",
            functools.partial(impl.concurrent, index=index),
            isolated=True,
        )
    add("ours.asyncio-streams.growth.sealed", "growth", "sealed", impl.growth, isolated=True)
    return scenarios


def alternative_scenarios() -> list[Scenario]:
    """jetblack-negotiate-stream's async client against our asyncio server (skipped when not installed)."""
    from . import _ours_impl as impl

    scenarios = []
    for kind in ("bulk", "pingpong"):
        name = f"alternative.jetblack.{kind}.sealed"
        func = _guard(name, "alternative", kind, "sealed", functools.partial(impl.jetblack, kind=kind))
        scenarios.append(Scenario(name, "alternative", kind, "sealed", func))
    return scenarios
