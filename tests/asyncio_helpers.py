"""Helpers shared by tests/test_asyncio_*.py: a hang guard and NTLM options for both sides."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from negotiate_stream.testing import NTLMUsers

T = TypeVar("T")
LEVELS = ["encrypt_and_sign", "sign", "none"]


def run_guarded(coro: Coroutine[Any, Any, T], guard: float) -> T:
    """Run ``coro`` on a fresh loop; fail after ``guard`` seconds rather than hang (never a performance check)."""

    async def guarded() -> T:
        return await asyncio.wait_for(coro, guard)

    return asyncio.run(guarded())


def client_opts(users: NTLMUsers, level: str = "encrypt_and_sign", password: str | None = None) -> dict[str, Any]:
    """Client options for the first account (``password`` overrides it)."""
    return {
        "credentials": users.client_credentials(password=password),
        "protocol": "ntlm",
        "target": "host/localhost",
        "protection_level": level,
    }


def server_opts(users: NTLMUsers, level: str = "encrypt_and_sign") -> dict[str, Any]:
    """Acceptor options for ``users``."""
    return {"credentials": users.server_credentials(), "protocol": "ntlm", "protection_level": level}
