"""The examples in examples/ run as documented and exit 0 (they check their own echoes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(
    "argv",
    [
        ["echo_asyncio.py"],
        ["echo_asyncio.py", "--level", "sign"],
        ["echo_anyio.py"],
        ["echo_anyio.py", "--backend", "trio"],
        ["echo_sync.py"],
    ],
    ids=" ".join,
)
def test_example_runs(argv: list[str]) -> None:
    """Each echo example runs as documented, exits 0 and prints its output (the examples check their own echoes)."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / argv[0]), *argv[1:]], check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip(), "the example printed nothing"


def test_demo_command_runs() -> None:
    """``python -m negotiate_stream demo`` exits 0 and reports an encrypt_and_sign echo."""
    result = subprocess.run(
        [sys.executable, "-m", "negotiate_stream", "demo"], check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "echo ok" in result.stdout and "encrypt_and_sign" in result.stdout
