"""Who authenticates and for what: ``connect --nt-hash-env`` and ``--delegate``, ``serve --allowed-spn``, and the
impersonation level both commands report.

The NT hash runs end to end through real ``serve`` / ``connect`` subprocesses (the server's user file holds the
account, the test computes the hash from its password) and must never show in what either command writes.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from negotiate_stream._spnego.ntlm_users import ntlm_hashes
from negotiate_stream.cli import build_parser
from negotiate_stream.cli._credentials import client_options
from negotiate_stream.testing import NTLMUsers
from tests.support.cli import CLI, NT_HASH_VARIABLE, TIMEOUT, USER, Serve, run_connect, run_connect_nt_hash, serve


def _nt_hash(password: str) -> str:
    """MD4(UTF-16LE(password)) in hex, by the library's helper (OpenSSL 3 may not offer MD4 to hashlib)."""
    return ntlm_hashes(password)[1].hex()


def _assert_hidden(nt_hash: str, *texts: str) -> None:
    """``nt_hash`` appears in none of ``texts``, in either case."""
    for text in texts:
        assert nt_hash.lower() not in text.lower()


# -- --nt-hash-env --------------------------------------------------------------------------------------------------


def test_nt_hash_env_authenticates_and_never_shows_the_hash(ntlm_users: NTLMUsers) -> None:
    """``connect --nt-hash-env`` authenticates to ``serve`` with the NT hash; -v, text and JSON never show it."""
    nt_hash = _nt_hash(ntlm_users.password(USER))
    data = b"authenticated by hash\n" * 100
    with serve(ntlm_users) as server:
        text = run_connect_nt_hash(server.port, "-v", stdin=data, nt_hash=nt_hash)
        as_json = run_connect_nt_hash(server.port, "-v", "--json", stdin=data, nt_hash=nt_hash.upper())
        assert server.stop() == 0, server.stderr
    for result in (text, as_json):
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout == data
        _assert_hidden(nt_hash, result.stderr.decode())
    assert "handshake complete (client side): protocol ntlm" in text.stderr.decode()
    events = [json.loads(line) for line in as_json.stderr.decode().splitlines()]
    assert [e["event"] for e in events if e["event"] != "log"] == ["connected", "closed"]
    handshakes = [e for e in server.events if e["event"] == "handshake"]
    assert [e["peer_identity"] for e in handshakes] == [USER, USER]
    _assert_hidden(nt_hash, json.dumps(server.events), server.stderr)


def test_wrong_nt_hash_fails_without_quoting_it(ntlm_users: NTLMUsers) -> None:
    """The NT hash of a wrong password exits 3 (SEC_E_LOGON_DENIED); neither the text nor the JSON error quotes it."""
    wrong = _nt_hash("not the password")
    with serve(ntlm_users) as server:
        text = run_connect_nt_hash(server.port, "-v", stdin=b"never sent", nt_hash=wrong)
        as_json = run_connect_nt_hash(server.port, "--json", "-v", stdin=b"never sent", nt_hash=wrong)
        assert server.stop() == 0, server.stderr
    assert text.returncode == as_json.returncode == 3
    assert text.stdout == as_json.stdout == b""
    assert "negotiate-stream connect: authentication failed" in text.stderr.decode()
    assert "SEC_E_LOGON_DENIED" in text.stderr.decode()
    error = [json.loads(line) for line in as_json.stderr.decode().splitlines()][-1]
    assert error["event"] == "error" and error["status"] == "SEC_E_LOGON_DENIED" and error["exit_code"] == 3
    _assert_hidden(wrong, text.stderr.decode(), as_json.stderr.decode(), json.dumps(server.events), server.stderr)
    assert sum(e["event"] == "handshake_failed" for e in server.events) == 2


_VALID = "0123456789abcdef0123456789ABCDEF"


@pytest.mark.parametrize(
    ("value", "extra", "message"),
    [
        (None, [], f"environment variable {NT_HASH_VARIABLE} is not set"),
        ("", [], f"environment variable {NT_HASH_VARIABLE} is empty"),
        ("   \n", [], f"environment variable {NT_HASH_VARIABLE} is empty"),
        ("secret-but-not-hex-secret-but-no", [], "does not hold an NT hash (32 hexadecimal digits)"),
        ("0123456789abcdef", [], "does not hold an NT hash (32 hexadecimal digits)"),
        (_VALID + "00", [], "does not hold an NT hash (32 hexadecimal digits)"),
        (_VALID, ["--password-env", "NS_TEST_PASSWORD"], "not allowed with argument --nt-hash-env"),
        (_VALID, ["--password-file", "/dev/null"], "not allowed with argument --nt-hash-env"),
        (_VALID, ["--protocol", "kerberos"], "--nt-hash-env authenticates with NTLM only"),
        (_VALID, ["--no-ntlm-fallback"], "--nt-hash-env authenticates with NTLM only"),
        (_VALID, ["--ccache", "FILE:/tmp/cc"], "--nt-hash-env replaces the password"),
        (_VALID, ["--delegate"], "--delegate needs Kerberos"),
    ],
)
def test_nt_hash_env_usage_errors_never_show_the_value(value: str | None, extra: list[str], message: str) -> None:
    """An unset, empty or malformed --nt-hash-env, or one combined with another secret, exits 2 without the value."""
    env = {k: v for k, v in os.environ.items() if k != NT_HASH_VARIABLE}
    if value is not None:
        env[NT_HASH_VARIABLE] = value
    argv = [*CLI, "connect", "127.0.0.1:9", "--user", USER, "--nt-hash-env", NT_HASH_VARIABLE, *extra]
    result = subprocess.run(argv, input=b"", capture_output=True, env=env, timeout=TIMEOUT, check=False)
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert message in stderr
    if value and value.strip():
        assert value.strip() not in stderr and value.strip().lower() not in stderr.lower()


def test_nt_hash_env_needs_user() -> None:
    """``--nt-hash-env`` without ``--user`` is a usage error: the hash belongs to one account."""
    env = {**os.environ, NT_HASH_VARIABLE: _VALID}
    argv = [*CLI, "connect", "127.0.0.1:9", "--nt-hash-env", NT_HASH_VARIABLE]
    result = subprocess.run(argv, input=b"", capture_output=True, env=env, timeout=TIMEOUT, check=False)
    assert result.returncode == 2
    assert "--nt-hash-env needs --user" in result.stderr.decode()
    assert _VALID not in result.stderr.decode()


def test_nt_hash_options_hide_the_hash_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    """The context options built from --nt-hash-env carry the hash, and their repr never shows it."""
    monkeypatch.setenv(NT_HASH_VARIABLE, f" {_VALID}\n")
    args = build_parser().parse_args(["connect", "h:1", "--user", USER, "--nt-hash-env", NT_HASH_VARIABLE])
    options = client_options(args)
    credentials = options["credentials"]
    assert credentials.nt_hash == _VALID and credentials.password is None
    assert credentials.principal == USER
    _assert_hidden(_VALID, repr(options), str(options), repr(credentials))


# -- --delegate -----------------------------------------------------------------------------------------------------


def test_delegate_option_asks_for_delegation() -> None:
    """``connect --delegate`` passes ``delegate=True`` to the context; without it the option is absent."""
    parse = build_parser().parse_args
    assert client_options(parse(["connect", "h:1", "--delegate"]))["delegate"] is True
    assert "delegate" not in client_options(parse(["connect", "h:1"]))


def failed_connect(users: NTLMUsers, serve_mode: tuple[str, ...], *connect_args: str) -> tuple[str, Serve]:
    """``connect`` (``connect_args``, data on stdin) to ``serve`` (``serve_mode``) fails its handshake: exit 3, an
    "authentication failed" message and no data out. Returns its stderr and the stopped server."""
    with serve(users, *serve_mode) as server:
        result = run_connect(server.port, *connect_args, stdin=b"never sent", password=users.password(USER))
        assert server.stop() == 0, server.stderr
    stderr = result.stderr.decode()
    assert result.returncode == 3, stderr
    assert stderr.startswith("negotiate-stream connect: authentication failed")
    assert result.stdout == b""
    return stderr, server


def test_delegate_fails_when_ntlm_is_negotiated(ntlm_users: NTLMUsers) -> None:
    """``--delegate`` reaches the handshake: when NTLM is negotiated it fails (exit 3) rather than not delegate."""
    stderr, server = failed_connect(ntlm_users, (), "--delegate")
    assert "NTLM cannot delegate" in stderr
    assert not [e for e in server.events if e["event"] == "handshake"]


def test_delegate_with_protocol_ntlm_is_a_usage_error() -> None:
    """``--delegate --protocol ntlm`` can never delegate: exit 2 before connecting."""
    argv = [*CLI, "connect", "127.0.0.1:9", "--protocol", "ntlm", "--delegate"]
    result = subprocess.run(argv, input=b"", capture_output=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 2
    assert "--delegate needs Kerberos: NTLM cannot delegate" in result.stderr.decode()


# -- serve --allowed-spn --------------------------------------------------------------------------------------------


def test_allowed_spn_lets_in_a_client_of_a_listed_name(ntlm_users: NTLMUsers) -> None:
    """A client whose target (host/127.0.0.1 by default) is listed, in any case, is served; the names are reported."""
    spns = ["HTTP/elsewhere.example.com", "HOST/127.0.0.1"]
    with serve(ntlm_users, "--echo", "--allowed-spn", spns[0], "--allowed-spn", spns[1]) as server:
        result = run_connect(server.port, stdin=b"spn ok", password=ntlm_users.password(USER))
        assert server.stop() == 0, server.stderr
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"spn ok"
    assert server.events[0]["allowed_spns"] == spns
    assert [e["peer_identity"] for e in server.events if e["event"] == "handshake"] == [USER]


def test_allowed_spn_refuses_a_client_of_another_name(ntlm_users: NTLMUsers) -> None:
    """A client that authenticated for an unlisted name is refused with ERROR_TRUST_FAILURE: exit 3, no data."""
    stderr, server = failed_connect(ntlm_users, ("--echo", "--allowed-spn", "HTTP/app.example.com"))
    assert "ERROR_TRUST_FAILURE" in stderr
    failed = [e for e in server.events if e["event"] == "handshake_failed"]
    assert len(failed) == 1
    assert failed[0]["error"] == "ServiceNameError" and failed[0]["status"] == "ERROR_TRUST_FAILURE"
    assert failed[0]["outcome"] == "handshake_failed"


def test_no_channel_binding_policy_option() -> None:
    """``serve`` offers no channel-binding policy: without TLS there is no channel to bind to."""
    args = build_parser().parse_args(["serve", "--listen", ":9", "--echo"])
    assert not hasattr(args, "channel_binding_policy")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--listen", ":9", "--echo", "--channel-binding-policy", "always"])


# -- impersonation level --------------------------------------------------------------------------------------------


def test_impersonation_level_in_text_lines(ntlm_users: NTLMUsers) -> None:
    """Both commands' text lines show the impersonation level next to the protocol and protection."""
    with serve(ntlm_users, json_output=False) as server:
        result = run_connect(server.port, stdin=b"x", password=ntlm_users.password(USER))
        assert server.stop() == 0, server.stderr
    assert result.returncode == 0, result.stderr.decode()
    assert "(ntlm, encrypt_and_sign, impersonation level: impersonation, mutual auth: no," in result.stderr.decode()
    assert f"authenticated {USER} (ntlm, encrypt_and_sign, impersonation level: impersonation, " in server.stderr


def test_impersonation_level_in_json_events(ntlm_users: NTLMUsers) -> None:
    """The ``connected`` (connect) and ``handshake`` (serve) JSON events carry ``impersonation_level``."""
    with serve(ntlm_users) as server:
        result = run_connect(server.port, "--json", stdin=b"x", password=ntlm_users.password(USER))
        assert server.stop() == 0, server.stderr
    assert result.returncode == 0, result.stderr.decode()
    connected = json.loads(result.stderr.decode().splitlines()[0])
    assert connected["event"] == "connected" and connected["impersonation_level"] == "impersonation"
    handshake = [e for e in server.events if e["event"] == "handshake"]
    assert handshake[0]["impersonation_level"] == "impersonation"
