"""Test helpers: a no-domain NTLM acceptor with in-memory accounts, and in-memory Connection pairs.

With :class:`NTLMUsers` a test (or a demo) runs both ends of a real NTLM authentication in one process, with no
domain controller::

    with NTLMUsers.generate() as users:
        client, server = connection_pair(users)
        handshake(client, server)

pyspnego's NTLM acceptor reads its accounts from a file named by ``$NTLM_USER_FILE``. :class:`NTLMUsers` writes a
private temporary file (mode 0600, hashes instead of passwords) and hands it to the server through
:attr:`Credentials.ntlm_user_file`; the library swaps it into the environment only for the duration of each
acceptor step, under a process-wide lock, and restores the previous value. Other threads of the process that
read ``NTLM_USER_FILE`` themselves during that window could observe the temporary value.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from ._connection import Connection
from ._context import Credentials, SecurityContext
from ._events import Data, EndOfStream, Event, HandshakeComplete, SessionInfo
from ._spnego.ntlm_users import ntlm_hashes, write_ntlm_user_file

__all__ = ["DEFAULT_DOMAIN", "NTLMUsers", "connection_pair", "exchange", "handshake", "transfer"]

DEFAULT_DOMAIN = "NEGOTIATE-TEST"


class NTLMUsers:
    """NTLM accounts held in a private temporary user file, for a server with no domain controller.

    ``users`` maps user names (optionally ``DOMAIN\\user``) to passwords. Use as a context manager, or call
    :meth:`close`, to delete the file.
    """

    def __init__(self, users: Mapping[str, str] | None = None, *, domain: str = DEFAULT_DOMAIN) -> None:
        self.domain = domain
        self._accounts: dict[tuple[str, str], str] = {}
        self._dir = tempfile.mkdtemp(prefix="negotiate-stream-ntlm-")
        self.path = os.path.join(self._dir, "ntlm_users")
        for name, password in (users or {}).items():
            self.add(name, password)
        if not users:
            write_ntlm_user_file(self.path, [])

    @classmethod
    def generate(cls, username: str = "alice", *, domain: str = DEFAULT_DOMAIN) -> NTLMUsers:
        """One account ``username`` with a random password (see :meth:`password`)."""
        return cls({username: secrets.token_urlsafe(18)}, domain=domain)

    def _split(self, name: str) -> tuple[str, str]:
        domain, sep, user = name.partition("\\")
        return (domain, user) if sep else (self.domain, name)

    def add(self, name: str, password: str) -> None:
        """Add (or replace) an account and rewrite the user file."""
        self._accounts[self._split(name)] = password
        write_ntlm_user_file(self.path, [(d, u, p) for (d, u), p in self._accounts.items()])

    def password(self, name: str) -> str:
        """The password of an account (tests need it to build a client)."""
        return self._accounts[self._split(name)]

    @property
    def usernames(self) -> list[str]:
        """Account names as ``DOMAIN\\user``."""
        return [f"{d}\\{u}" for d, u in self._accounts]

    def client_credentials(
        self, name: str | None = None, *, password: str | None = None, nt_hash: bool = False
    ) -> Credentials:
        """Client credentials for account ``name`` (default: the first).

        ``password`` overrides the account's password (for wrong-password tests). With ``nt_hash`` the credentials
        carry the password's NT hash instead of the password (``Credentials(nt_hash=...)``, NTLM only).
        """
        domain, user = self._split(name) if name else next(iter(self._accounts))
        actual = password if password is not None else self._accounts[(domain, user)]
        if nt_hash:
            return Credentials(username=user, domain=domain, nt_hash=ntlm_hashes(actual)[1].hex())
        return Credentials(username=user, password=actual, domain=domain)

    def server_credentials(self) -> Credentials:
        """Acceptor credentials that accept exactly these accounts."""
        return Credentials(ntlm_user_file=self.path)

    def close(self) -> None:
        """Delete the user file."""
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> NTLMUsers:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<NTLMUsers {len(self._accounts)} account(s) at {self.path!r}>"


def connection_pair(
    users: NTLMUsers,
    *,
    client_options: Mapping[str, Any] | None = None,
    server_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> tuple[Connection, Connection]:
    """A client and a server :class:`Connection` (MS-NNS framing) for the first account of ``users``.

    ``options`` (``protocol``, ``protection_level``, ...) go to both sides; ``client_options`` / ``server_options``
    to one side only. Defaults: protocol ``ntlm``, target ``host/localhost``.
    """
    common: dict[str, Any] = {"protocol": "ntlm", **options}
    client_ctx = SecurityContext.client(
        **{"credentials": users.client_credentials(), **common, **(client_options or {})}
    )
    server_ctx = SecurityContext.server(
        **{"credentials": users.server_credentials(), **common, **(server_options or {})}
    )
    return Connection(client_ctx), Connection(server_ctx)


def exchange(sender: Connection, receiver: Connection, wire: bytes = b"") -> list[Event]:
    """Deliver ``wire`` plus ``sender.data_to_send()`` to ``receiver``; return every event it produces."""
    wire += sender.data_to_send()
    if wire:
        receiver.receive_data(wire)
    events: list[Event] = []
    while True:
        event = receiver.next_event()
        if not isinstance(event, HandshakeComplete | Data | EndOfStream):
            return events
        events.append(event)
        if isinstance(event, EndOfStream):
            return events


def handshake(client: Connection, server: Connection) -> tuple[SessionInfo, SessionInfo]:
    """Run the MS-NNS handshake between two in-memory Connections; returns (client info, server info).

    Errors propagate exactly as an I/O layer would see them (the failing side's Error frame is left in its
    ``data_to_send()``).
    """
    for _ in range(16):
        exchange(client, server)
        exchange(server, client)
        if client.info is not None and server.info is not None:
            return client.info, server.info
    raise AssertionError("handshake did not converge")


def transfer(sender: Connection, receiver: Connection, data: bytes) -> bytes:
    """Send ``data`` from one established Connection to the other in memory; return what arrived."""
    wire = sender.send(data)
    received = bytearray()
    for event in exchange(sender, receiver, wire):
        if isinstance(event, Data):
            received += event.data
    return bytes(received)
