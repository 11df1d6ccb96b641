"""Environment swapping around pyspnego acceptor calls (part of the pyspnego border, see :mod:`.._spnego`).

pyspnego's NTLM acceptor reads its accounts only from the file named by ``$NTLM_USER_FILE``, at step time, and MIT
Kerberos finds an acceptor keytab only through ``$KRB5_KTNAME``, when the acceptor credential is acquired. An
explicit per-server file (``Credentials.ntlm_user_file`` / ``Credentials.keytab``) is therefore put into the
environment around each acceptor call, under one process-wide lock, and the previous value restored afterwards.

Thread-safety: acceptor calls of all contexts in the process are serialised by the lock while a file is swapped
in; other code of the process that reads these variables itself during that window could see the temporary value.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .._options import Credentials

__all__ = ["acceptor_environment", "environment"]

# Re-entrant: one acceptor call swaps NTLM_USER_FILE and KRB5_KTNAME together, nested.
_ENV_LOCK = threading.RLock()


@contextmanager
def environment(name: str, value: str | None) -> Iterator[None]:
    """Set ``$name`` to ``value`` for the duration of the block, then restore it; ``None`` changes nothing."""
    if value is None:
        yield
        return
    with _ENV_LOCK:
        previous = os.environ.get(name)
        os.environ[name] = value
        try:
            yield
        finally:
            if previous is None:
                del os.environ[name]
            else:
                os.environ[name] = previous


@contextmanager
def acceptor_environment(credentials: Credentials | None) -> Iterator[None]:
    """Put an acceptor's NTLM user file and keytab (those given) into the environment for one pyspnego call.

    SPNEGO acceptors build their mechanism contexts at the first step, not at creation, so both variables must be
    in place around every acceptor call. ``None`` (an initiator) changes nothing.
    """
    if credentials is None:
        yield
        return
    with environment("NTLM_USER_FILE", credentials.ntlm_user_file), environment("KRB5_KTNAME", credentials.keytab):
        yield
