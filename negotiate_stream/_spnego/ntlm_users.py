"""NTLM account files for pyspnego's acceptor (part of the pyspnego border, see :mod:`.._spnego`).

pyspnego's NTLM acceptor has no credential API: it reads ``DOMAIN:USER:PASSWORD`` lines, or smbpasswd-style lines
with precomputed hashes, from the file named by ``$NTLM_USER_FILE`` (see :mod:`.environment`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from spnego._ntlm_raw.crypto import lmowfv1, ntowfv1

__all__ = ["ntlm_hashes", "write_ntlm_user_file"]


def ntlm_hashes(password: str) -> tuple[bytes, bytes]:
    """The LM and NT hashes of ``password`` (MS-NLMP ``LMOWFv1`` / ``NTOWFv1``), computed as pyspnego does."""
    return lmowfv1(password), ntowfv1(password)


def write_ntlm_user_file(path: str, users: Iterable[tuple[str, str, str]]) -> None:
    """Write an NTLM acceptor user file for ``(domain, user, password)`` triples.

    Lines are smbpasswd-style (``DOMAIN\\user:0:LMHASH:NTHASH:[U]:LCT-0``) with the hashes precomputed, which
    makes each acceptor handshake about three times cheaper than the plain ``DOMAIN:USER:PASSWORD`` form and
    allows any character in the password. The file is created with mode 0600.
    """
    lines = []
    for domain, user, password in users:
        if any(ch in f"{domain}{user}" for ch in ":\\\n\r"):
            raise ValueError("NTLM domain and user names may not contain ':', '\\' or line breaks")
        lm_hash, nt_hash = ntlm_hashes(password)
        lines.append(f"{domain}\\{user}:0:{lm_hash.hex().upper()}:{nt_hash.hex().upper()}:[U          ]:LCT-00000000\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.writelines(lines)
