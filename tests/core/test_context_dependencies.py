"""SecurityContext and its optional dependencies: Kerberos without the ``kerberos`` extra fails with a typed error.

The extra (python-gssapi + krb5) is absent on a fresh machine. These tests block its import through
``sys.modules`` so they mean the same on a machine where it is installed: the library must check for the extra
when it needs Kerberos, not trust what pyspnego saw when it was first imported.
"""

from __future__ import annotations

import copy
import os
import pickle
import sys
import types

import pytest
import spnego._gss  # tests may reach into pyspnego; the library does so only in negotiate_stream._spnego

import negotiate_stream
from negotiate_stream import (
    AuthenticationError,
    Credentials,
    KerberosUnavailableError,
    NegotiateError,
    SecurityContext,
)
from negotiate_stream import errors as errors_module
from negotiate_stream.errors import SEC_E_LOGON_DENIED, SEC_E_SECPKG_NOT_FOUND, status_name
from negotiate_stream.testing import NTLMUsers

KERBEROS_MODULES = ("gssapi", "krb5")
INSTALL_HINT = "pip install 'negotiate-stream[kerberos]'"


@pytest.fixture
def without_kerberos_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import gssapi`` / ``import krb5`` fail and pyspnego run without them, as on a fresh machine."""
    for name in KERBEROS_MODULES:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: the import raises ImportError
    monkeypatch.setattr(spnego._gss, "HAS_GSSAPI", False)  # what pyspnego records when `import gssapi` fails


@pytest.fixture
def pyspnego_without_gssapi(monkeypatch: pytest.MonkeyPatch) -> None:
    """The extra looks importable to the library, but pyspnego itself runs without python-gssapi."""
    for name in KERBEROS_MODULES:
        if name not in sys.modules:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setattr(spnego._gss, "HAS_GSSAPI", False)  # what pyspnego records when `import gssapi` fails


def assert_install_advice(error: KerberosUnavailableError) -> None:
    text = str(error)
    assert INSTALL_HINT in text
    assert "libkrb5" in text and "libkrb5-dev" in text
    assert isinstance(error, AuthenticationError) and isinstance(error, NegotiateError)
    assert not isinstance(error, ImportError)


@pytest.mark.usefixtures("without_kerberos_extra")
@pytest.mark.parametrize("server_side", [False, True], ids=["client", "server"])
@pytest.mark.parametrize(
    "credentials",
    [
        None,
        Credentials(username="carol", password="unused-Pa55", domain="EXAMPLE.TEST"),
        Credentials(username="carol@EXAMPLE.TEST", keytab="/nonexistent/carol.keytab"),
    ],
    ids=["default", "password", "keytab"],
)
def test_kerberos_without_extra_fails_at_creation(server_side: bool, credentials: Credentials | None) -> None:
    """protocol="kerberos" without the extra raises KerberosUnavailableError with install advice, not ImportError."""
    with pytest.raises(KerberosUnavailableError) as info:
        SecurityContext.create(server_side, protocol="kerberos", credentials=credentials)
    assert_install_advice(info.value)
    assert info.value.status == SEC_E_SECPKG_NOT_FOUND
    assert str(info.value).endswith("[SEC_E_SECPKG_NOT_FOUND]")
    assert isinstance(info.value.__cause__, ImportError)


@pytest.mark.usefixtures("without_kerberos_extra")
def test_negotiate_without_fallback_fails_at_first_client_step() -> None:
    """Negotiate with allow_ntlm_fallback=False and no extra fails at the first step, before any token exists."""
    client = SecurityContext.client(
        credentials=Credentials(username="carol", password="unused-Pa55", domain="EXAMPLE.TEST"),
        protocol="negotiate",
        allow_ntlm_fallback=False,
    )
    with pytest.raises(KerberosUnavailableError, match="allow_ntlm_fallback=False") as info:
        client.step(None)
    assert_install_advice(info.value)
    # The status of a refused NTLM fallback where Kerberos is installed: the same on every machine.
    assert info.value.status == SEC_E_LOGON_DENIED
    assert "NTLM fallback is disabled" in str(info.value)
    with pytest.raises(KerberosUnavailableError):  # and it stays refused
        client.step(None)
    assert not client.complete


@pytest.mark.usefixtures("without_kerberos_extra")
def test_negotiate_without_fallback_server_refuses_first_token(ntlm_users: NTLMUsers) -> None:
    """A Negotiate acceptor that may not fall back to NTLM refuses the first token when the extra is missing."""
    client = SecurityContext.client(credentials=ntlm_users.client_credentials(), protocol="negotiate")
    server = SecurityContext.server(
        credentials=ntlm_users.server_credentials(), protocol="negotiate", allow_ntlm_fallback=False
    )
    token = client.step(None)
    assert token is not None
    with pytest.raises(KerberosUnavailableError) as info:
        server.step(token)
    assert_install_advice(info.value)
    assert not server.complete


@pytest.mark.usefixtures("without_kerberos_extra")
@pytest.mark.parametrize("level", ["none", "sign", "encrypt_and_sign"])
def test_negotiate_with_fallback_uses_ntlm_without_extra(ntlm_users: NTLMUsers, level: str) -> None:
    """Plain Negotiate (fallback allowed) still authenticates over NTLM and protects data without the extra."""
    client = SecurityContext.client(
        credentials=ntlm_users.client_credentials(), protocol="negotiate", protection_level=level
    )
    server = SecurityContext.server(
        credentials=ntlm_users.server_credentials(), protocol="negotiate", protection_level=level
    )
    token = client.step(None)
    for _ in range(8):
        if token is not None:
            token = server.step(token)
        if token is not None:
            token = client.step(token)
        if client.complete and server.complete and token is None:
            break
    assert client.complete and server.complete
    assert client.negotiated_protocol == server.negotiated_protocol == "ntlm"
    assert server.peer_identity == ntlm_users.usernames[0]
    if level != "none":
        assert server.unprotect(client.protect(b"still works")) == b"still works"
        assert client.unprotect(server.protect(b"both ways")) == b"both ways"


@pytest.mark.usefixtures("pyspnego_without_gssapi")
@pytest.mark.parametrize("server_side", [False, True], ids=["client", "server"])
def test_pyspnego_import_error_is_translated(server_side: bool) -> None:
    """If pyspnego itself lacks python-gssapi, its bare ImportError still becomes KerberosUnavailableError."""
    with pytest.raises(KerberosUnavailableError) as info:
        SecurityContext.create(server_side, protocol="kerberos")
    assert_install_advice(info.value)
    assert info.value.status == SEC_E_SECPKG_NOT_FOUND
    assert isinstance(info.value.__cause__, ImportError)


@pytest.mark.usefixtures("pyspnego_without_gssapi")
def test_negotiate_without_fallback_and_extra_importable_reports_refused_fallback(ntlm_users: NTLMUsers) -> None:
    """With the extra importable, a Negotiate client that lands on NTLM gets the refused-fallback error instead."""
    client = SecurityContext.client(
        credentials=ntlm_users.client_credentials(), protocol="negotiate", allow_ntlm_fallback=False
    )
    with pytest.raises(AuthenticationError, match="NTLM fallback is disabled") as info:
        client.step(None)
    assert not isinstance(info.value, KerberosUnavailableError)
    assert info.value.status == SEC_E_LOGON_DENIED


@pytest.mark.parametrize("status", [None, SEC_E_LOGON_DENIED])
def test_kerberos_unavailable_error_pickles_and_copies(status: int | None) -> None:
    """KerberosUnavailableError survives pickle, copy and deepcopy with its message and status."""
    error = KerberosUnavailableError(f"Kerberos is not available: {INSTALL_HINT}", status=status)
    expected_status = SEC_E_SECPKG_NOT_FOUND if status is None else status
    for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error), copy.deepcopy(error)):
        assert type(clone) is KerberosUnavailableError
        assert clone.status == expected_status
        assert str(clone) == str(error)
        assert clone.args == error.args


def test_kerberos_unavailable_error_is_exported() -> None:
    """The new error and its status are exported from errors and the package root."""
    assert "KerberosUnavailableError" in negotiate_stream.__all__
    assert "KerberosUnavailableError" in errors_module.__all__
    assert negotiate_stream.KerberosUnavailableError is errors_module.KerberosUnavailableError
    assert "SEC_E_SECPKG_NOT_FOUND" in errors_module.__all__
    assert status_name(SEC_E_SECPKG_NOT_FOUND) == "SEC_E_SECPKG_NOT_FOUND"
    assert KerberosUnavailableError.__doc__


def test_acceptor_steps_restore_the_environment(ntlm_users: NTLMUsers, monkeypatch: pytest.MonkeyPatch) -> None:
    """An acceptor's own user file is in NTLM_USER_FILE only during its steps; the previous value comes back."""
    monkeypatch.setenv("NTLM_USER_FILE", "/previous/value")
    monkeypatch.delenv("KRB5_KTNAME", raising=False)
    client = SecurityContext.client(credentials=ntlm_users.client_credentials(), protocol="ntlm")
    server = SecurityContext.server(credentials=ntlm_users.server_credentials(), protocol="ntlm")
    token = client.step(None)
    while token is not None and not server.complete:
        token = server.step(token)
        assert os.environ["NTLM_USER_FILE"] == "/previous/value"
        token = client.step(token) if token is not None else None
    assert server.complete
    assert "KRB5_KTNAME" not in os.environ
