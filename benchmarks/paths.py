"""Which code protects the NTLM records of a scenario: the library's fast path or pyspnego's, side by side.

An NTLM :class:`~negotiate_stream.SecurityContext` takes its records over from pyspnego when its handshake completes
(the *fast path*), unless ``NEGOTIATE_STREAM_NTLM_FAST_PATH=0`` is set at that moment. The scenarios that compare the
two paths set the variable around context creation and handshake only (:func:`record_path_env`, which restores it
afterwards, so no other scenario inherits it), then check each context's ``record_path``
(:func:`check_record_path`): a scenario that measured the other path fails instead of reporting a wrong figure.

The pyspnego twin of a scenario carries the suffix :data:`PYSPNEGO_SUFFIX` (``floor.context.sealed.pyspnego-path``);
the fast one keeps its plain name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Literal, Protocol

__all__ = [
    "FAST_PATH_VARIABLE",
    "PATH_SETTINGS",
    "PYSPNEGO_SUFFIX",
    "RecordPath",
    "check_record_path",
    "expected_path",
    "path_of",
    "record_path_env",
    "suffix_of",
]

#: The library's switch (read when a context completes its handshake); ``0`` keeps the records in pyspnego.
FAST_PATH_VARIABLE = "NEGOTIATE_STREAM_NTLM_FAST_PATH"
#: The name suffix of a scenario measured on pyspnego's record path.
PYSPNEGO_SUFFIX = ".pyspnego-path"
#: The two record paths a scenario can ask for.
RecordPath = Literal["fast", "pyspnego"]
#: The value of :data:`FAST_PATH_VARIABLE` that selects each path. The fast one is set explicitly too, so that a
#: ``NEGOTIATE_STREAM_NTLM_FAST_PATH=0`` left in the caller's environment cannot make it measure pyspnego.
PATH_SETTINGS: dict[RecordPath, str] = {"fast": "1", "pyspnego": "0"}


class _HasRecordPath(Protocol):
    @property
    def record_path(self) -> str: ...


def path_of(name: str) -> RecordPath:
    """The record path a scenario name claims: ``pyspnego`` for a ``*.pyspnego-path`` name, else ``fast``."""
    return "pyspnego" if name.endswith(PYSPNEGO_SUFFIX) else "fast"


def suffix_of(path: RecordPath | None) -> str:
    """The scenario name suffix of ``path``: :data:`PYSPNEGO_SUFFIX` for pyspnego, nothing for the fast path."""
    return PYSPNEGO_SUFFIX if path == "pyspnego" else ""


def expected_path(path: RecordPath, level: str) -> str:
    """The ``record_path`` a context must report at ``level``: none at protection level none, else ``path``."""
    return "none" if level == "none" else path


@contextmanager
def record_path_env(path: RecordPath) -> Iterator[None]:
    """Select ``path`` for the contexts that complete their handshake inside the block; restore the environment."""
    previous = os.environ.get(FAST_PATH_VARIABLE)
    os.environ[FAST_PATH_VARIABLE] = PATH_SETTINGS[path]
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(FAST_PATH_VARIABLE, None)
        else:
            os.environ[FAST_PATH_VARIABLE] = previous


def check_record_path(contexts: Iterable[_HasRecordPath], expected: str) -> str:
    """Raise RuntimeError unless every context's ``record_path`` is ``expected``; returns ``expected``."""
    found = [context.record_path for context in contexts]
    if not found or any(path != expected for path in found):
        raise RuntimeError(f"measured the wrong record path: contexts report {found}, the scenario claims {expected!r}")
    return expected
