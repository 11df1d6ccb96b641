"""Shared fixtures: real NTLM accounts for an in-process acceptor, and Kerberos kept off the network."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from negotiate_stream.testing import NTLMUsers
from tests.support.core import GSSAPI_MISSING, HAS_GSSAPI


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip ``kerberos``-marked tests (``requires_gssapi``) where python-gssapi is missing, naming the extra."""
    if not HAS_GSSAPI and item.get_closest_marker("kerberos") is not None:
        pytest.skip(GSSAPI_MISSING)


@pytest.fixture(scope="session")
def ntlm_users() -> Iterator[NTLMUsers]:
    """One account (``NEGOTIATE-TEST\\alice``, random password) shared by the whole test session."""
    with NTLMUsers.generate() as users:
        yield users


@pytest.fixture(scope="session")
def _offline_krb5_config(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("krb5") / "krb5.conf"
    path.write_text("[libdefaults]\n dns_lookup_kdc = false\n dns_lookup_realm = false\n")
    return str(path)


@pytest.fixture(autouse=True)
def offline_kerberos(
    request: pytest.FixtureRequest, _offline_krb5_config: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep Negotiate's Kerberos attempt for the test accounts off the network (not for interop tests).

    With ``protocol="negotiate"``, a password and a domain, pyspnego first asks MIT Kerberos for a ticket for
    ``alice@NEGOTIATE-TEST``; with the system krb5.conf that means DNS SRV lookups for a realm that does not
    exist, which intermittently stall for the resolver's 5 s timeout. Interop tests bring their own realm.
    """
    if request.node.get_closest_marker("interop") is None:
        monkeypatch.setenv("KRB5_CONFIG", _offline_krb5_config)
