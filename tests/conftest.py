"""Shared fixtures: real NTLM accounts for an in-process acceptor."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from negotiate_stream.testing import NTLMUsers


@pytest.fixture(scope="session")
def ntlm_users() -> Iterator[NTLMUsers]:
    """One account (``NEGOTIATE-TEST\\alice``, random password) shared by the whole test session."""
    with NTLMUsers.generate() as users:
        yield users
