"""Fixtures of the core tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from negotiate_stream.testing import NTLMUsers


@pytest.fixture
def users(request: pytest.FixtureRequest) -> Iterator[NTLMUsers]:
    """One account, ``NEGOTIATE-TEST\\alice``, whose password is the known ``PASSWORD`` of the requesting module."""
    with NTLMUsers({"alice": request.module.PASSWORD}) as accounts:
        yield accounts
