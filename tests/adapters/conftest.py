"""Fixtures shared by the adapter tests: the hanging and slow KDCs (tests/support/kdc.py) and a step observer."""

from __future__ import annotations

import threading

import pytest

from negotiate_stream import SecurityContext
from tests.support.kdc import black_hole_kdc, slow_kdc_steps

__all__ = ["black_hole_kdc", "slow_kdc_steps", "step_threads"]


@pytest.fixture
def step_threads(monkeypatch: pytest.MonkeyPatch) -> set[threading.Thread]:
    """The threads :meth:`SecurityContext.step` ran in during the test (each step still runs as usual)."""
    original = SecurityContext.step
    threads: set[threading.Thread] = set()

    def step(self: SecurityContext, in_token: bytes | None = None) -> bytes | None:
        threads.add(threading.current_thread())
        return original(self, in_token)

    monkeypatch.setattr(SecurityContext, "step", step)
    return threads
