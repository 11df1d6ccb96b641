"""A throwaway MIT Kerberos realm (``scripts/interop/krb5-realm``) for the interop tests and the benchmark harness.

:func:`mit_realm` starts one in a new temporary directory and always stops and deletes it again. A realm that does
not start raises :class:`RealmUnavailable` with the reason: the tests skip with it, the benchmark skips its
Kerberos scenarios with it. No pytest here (``benchmarks/kerberos.py`` imports this module too).
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["REALM_SCRIPT", "Realm", "RealmUnavailable", "kdc_installed", "mit_realm", "parse_exports"]

#: The realm helper of the interop suite.
REALM_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "interop" / "krb5-realm"


def parse_exports(text: str) -> dict[str, str]:
    """The ``export NAME=VALUE`` lines a peer helper (realm, Samba DC) prints, values shell-quoted."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            env[name] = value
    return env


def kdc_installed() -> bool:
    """Whether MIT's ``krb5kdc`` is installed (Debian krb5-kdc)."""
    return shutil.which("krb5kdc") is not None or Path("/usr/sbin/krb5kdc").exists()


class RealmUnavailable(Exception):
    """The realm did not start; the message says why."""


@dataclass(frozen=True)
class Realm:
    """A running throwaway MIT realm: the variables its helper exported (``KRB5_CONFIG``, ``KRB5CCNAME``, ...)."""

    env: dict[str, str]

    @property
    def principal(self) -> str:
        """The user principal, ``alice@INTEROP.TEST``."""
        return self.env["INTEROP_KRB5_PRINCIPAL"]

    @property
    def password(self) -> str:
        """The user's password."""
        return self.env["INTEROP_KRB5_PASSWORD"]

    @property
    def keytab(self) -> str:
        """The service keytab path (``host/localhost`` and ``HTTP/localhost``), without the ``FILE:`` prefix."""
        return self.env["KRB5_KTNAME"].removeprefix("FILE:")

    @property
    def ccache(self) -> str:
        """The user's ticket cache (``FILE:...``), filled by the helper's kinit."""
        return self.env["KRB5CCNAME"]


@contextlib.contextmanager
def mit_realm(prefix: str, *, timeout: float | None = None) -> Iterator[Realm]:
    """Start a realm in a new temporary directory named ``prefix...``; stop it and delete the directory on exit.

    Raises :class:`RealmUnavailable` when the helper fails or takes longer than ``timeout`` seconds to start.
    """
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    realm_dir = str(directory / "realm")
    try:
        try:
            started = subprocess.run(
                [str(REALM_SCRIPT), "start", realm_dir], capture_output=True, text=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RealmUnavailable(f"the MIT realm did not start: {exc}") from exc
        if started.returncode != 0:
            tail = (started.stderr.strip().splitlines() or ["no output"])[-1]
            raise RealmUnavailable(f"the MIT realm did not start: {tail}")
        yield Realm(parse_exports(started.stdout))
    finally:
        # Stops only the KDC this helper started (it checks the pid file of realm_dir), then deletes the files.
        with contextlib.suppress(OSError):
            subprocess.run([str(REALM_SCRIPT), "stop", realm_dir, "--clean"], capture_output=True, check=False)
        shutil.rmtree(directory, ignore_errors=True)
