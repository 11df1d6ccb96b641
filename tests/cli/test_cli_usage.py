"""``negotiate-stream`` commands and options: usage errors, help texts, and what the command line offers."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from negotiate_stream.cli import build_parser, main
from tests.support.cli import CLI, TIMEOUT


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["connect", "127.0.0.1:9", "--password", "hunter2"], "--password is not accepted"),
        (["connect", "127.0.0.1:9", "--framing", "sasl"], "argument --framing: invalid choice: 'sasl'"),
        (["serve", "--listen", "127.0.0.1:0", "--echo", "--framing", "sasl"], "argument --framing: invalid choice"),
        (["connect", "127.0.0.1:9", "--user", "a", "--password-env", "NS_TEST_UNSET_VARIABLE"], "is not set"),
        (["connect", "no-port-here"], "is not HOST:PORT"),
        (["serve", "--listen", "127.0.0.1:0", "--echo", "--users-file", "/nonexistent/users"], "cannot read"),
        (["serve", "--listen", "127.0.0.1:0"], "one of the arguments --echo --forward is required"),
        (["serve", "--listen", "127.0.0.1:0", "--echo", "--idle-timeout", "-1"], "--idle-timeout must be 0"),
        (["serve", "--listen", "127.0.0.1:0", "--echo", "--idle-timeout", "soon"], "argument --idle-timeout"),
        (["serve", "--listen", "127.0.0.1:0", "--echo", "--proxy-protocol", "v2"], "--proxy-protocol needs --forward"),
        (["serve", "--listen", "127.0.0.1:0", "--forward", ":9", "--proxy-protocol", "v1"], "invalid choice: 'v1'"),
        (["serve", "--listen", "127.0.0.1:0", "--echo", "--allow", "alice"], "--allow 'alice': give one identity"),
        (["serve", "--listen", "127.0.0.1:0", "--echo", "--allow", "EX\\al*"], "* stands only for a whole user"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], message: str) -> None:
    """A bad command line exits 2 with a reason on stderr, and never echoes a password given on it."""
    env = {k: v for k, v in os.environ.items() if k != "NS_TEST_UNSET_VARIABLE"}
    result = subprocess.run(  # noqa: PLW1510
        [*CLI, *argv], input=b"", capture_output=True, env=env, timeout=TIMEOUT
    )
    assert result.returncode == 2
    assert message in result.stderr.decode()
    assert "hunter2" not in result.stderr.decode()


@pytest.mark.parametrize("command", [[], ["serve"], ["connect"], ["demo"]])
def test_help_of_each_command(command: list[str]) -> None:
    """Every command has ``--help``; serve and connect show examples and the exit codes."""
    result = subprocess.run(  # noqa: PLW1510
        [*CLI, *command, "--help"], capture_output=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode()
    assert text.startswith("usage: negotiate-stream")
    if command in (["serve"], ["connect"]):
        assert "examples:" in text
        assert "exit codes:" in text


def test_only_the_users_commands(capsys: pytest.CaptureFixture[str]) -> None:
    """The command offers demo, serve and connect only: the benchmark is not a sub-command."""
    listed = re.findall(r"^    (\S+) ", build_parser().format_help(), flags=re.MULTILINE)
    assert listed == ["demo", "serve", "connect"]
    with pytest.raises(SystemExit) as exit_info:
        main(["bench"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'bench'" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["connect", "127.0.0.1:9"], ["serve", "--listen", ":9", "--echo"]])
def test_framing_nns_is_still_accepted(command: list[str]) -> None:
    """Command lines written with ``--framing nns`` (the only framing) keep working."""
    assert build_parser().parse_args([*command, "--framing", "nns"]).framing == "nns"


def test_serve_idle_timeout_option(capsys: pytest.CaptureFixture[str]) -> None:
    """``serve --idle-timeout`` defaults to 300 seconds, and its help says what counts and that 0 disables it."""
    assert build_parser().parse_args(["serve", "--listen", ":9", "--echo"]).idle_timeout == 300
    assert build_parser().parse_args(["serve", "--listen", ":9", "--echo", "--idle-timeout", "0"]).idle_timeout == 0
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--idle-timeout SECONDS" in help_text
    assert "only complete records count" in help_text
    assert "0 disables (default: 300)" in help_text
