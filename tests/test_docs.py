"""The documentation site (user guide, CLI reference, API reference) builds without warnings."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_docs_build_strictly(tmp_path: Path) -> None:
    """``mkdocs build --strict`` succeeds and writes the index and API reference pages."""
    missing = [name for name in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python") if not _importable(name)]
    if missing:
        pytest.skip(f"docs toolchain not installed ({', '.join(missing)}): pip install -e '.[docs]'")
    result = subprocess.run(  # noqa: PLW1510 - the exit status is what we check
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    assert (tmp_path / "site" / "index.html").exists()
    assert (tmp_path / "site" / "reference" / "index.html").exists()
