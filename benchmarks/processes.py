"""How the benchmark starts a child interpreter: isolated scenarios and the peers of the two-process scenarios."""

from __future__ import annotations

import os
import sys

__all__ = ["REPO_ROOT", "child_command", "child_environment"]

#: The checkout holding both ``benchmarks`` and ``negotiate_stream``.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_command(*args: str) -> list[str]:
    """The command line that runs ``python -m benchmarks ARGS`` with this interpreter."""
    return [sys.executable, "-m", "benchmarks", *args]


def child_environment() -> dict[str, str]:
    """The environment of a child: it must import this same checkout's ``benchmarks`` and ``negotiate_stream``
    whatever its working directory and whether the package is installed or not."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")]))}
