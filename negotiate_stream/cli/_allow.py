"""``serve --allow``: which authenticated identities may use the server, and how the others are refused.

What :attr:`SessionInfo.peer_identity <negotiate_stream.SessionInfo.peer_identity>` holds on a server:

* NTLM: ``DOMAIN\\user`` exactly as the client sent them in its AUTHENTICATE message (pyspnego joins the two
  fields; the case is the client's, since the account lookup ignores case), or ``user`` / ``user@suffix`` (a UPN)
  when the client sent no domain.
* Kerberos: the client principal, ``user@REALM`` (``user`` may hold an instance, ``host/app``; an ``@`` inside a
  component is escaped as ``\\@``).

Both are read as a pair (user, domain): NTLM splits at the first backslash (a UPN without a domain at its last
``@``), Kerberos at the first unescaped ``@``. A pattern ``DOMAIN\\user`` or ``user@REALM`` is the same kind of
pair, in either spelling, and matches when the user and the domain are equal ignoring case (Windows semantics;
``*`` as a whole part matches anything). So ``EXAMPLE\\alice`` also matches ``alice@EXAMPLE``, but not
``alice@EXAMPLE.COM``: NetBIOS domain names and DNS realms are different names, and nothing maps one to the other.

The refusal happens inside the handshake, before the server's final HandshakeDone is sent: :func:`server_context`
gives a context whose completing step raises :class:`AccessDeniedError` (``SEC_E_LOGON_DENIED``), so the client
reads an MS-NNS Error frame where it expected HandshakeDone, never a session that is then cut off.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .._context import SecurityContext
from ..errors import SEC_E_LOGON_DENIED, AuthenticationError
from ._errors import CLIUsageError

__all__ = ["AccessDeniedError", "AllowList", "IdentityPattern", "server_context", "split_identity"]

_ANY = "*"


def _split_principal(name: str) -> tuple[str, str]:
    """(user, realm) of a Kerberos principal name: the realm follows the first ``@`` that is not escaped."""
    escaped = False
    for index, char in enumerate(name):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "@":
            return name[:index], name[index + 1 :]
    return name, ""


def split_identity(identity: str, protocol: str | None) -> tuple[str, str]:
    """(user, domain) of an authenticated ``identity`` of ``protocol`` (``"ntlm"`` or ``"kerberos"``).

    The domain is ``""`` when the identity names none (an NTLM client that sent no domain).
    """
    if protocol == "kerberos":
        return _split_principal(identity)
    # NTLM: the domain field comes first and can hold no backslash. Splitting anywhere else would let a client of
    # domain EVIL whose user name is "alice@GOOD" pass for a member of GOOD.
    domain, sep, user = identity.partition("\\")
    if sep:
        return user, domain
    user, sep, suffix = identity.rpartition("@")
    return (user, suffix) if sep else (identity, "")


@dataclass(frozen=True, slots=True)
class IdentityPattern:
    """One ``--allow`` value: a user and a domain (or realm), each a name or ``*`` (anything)."""

    user: str
    domain: str
    text: str

    @classmethod
    def parse(cls, text: str) -> IdentityPattern:
        """Parse ``DOMAIN\\user``, ``user@REALM``, ``DOMAIN\\*``, ``*@REALM`` (``*`` only as a whole part).

        Raises :class:`CLIUsageError` for anything else.
        """
        if text.count("\\") + text.count("@") != 1:
            raise CLIUsageError(
                f"--allow {text!r}: give one identity as DOMAIN\\user, user@REALM, DOMAIN\\* or *@REALM "
                "(one backslash or one @)"
            )
        if "\\" in text:
            domain, _, user = text.partition("\\")
        else:
            user, _, domain = text.partition("@")
        for part in (user, domain):
            if not part or (_ANY in part and part != _ANY):
                raise CLIUsageError(
                    f"--allow {text!r}: the user and the domain must both be given, and * stands only for a whole "
                    "user or a whole domain (e.g. EXAMPLE\\* or *@EXAMPLE.COM)"
                )
        return cls(user=user, domain=domain, text=text)

    def matches(self, user: str, domain: str) -> bool:
        """True if (``user``, ``domain``) is this pattern's, ignoring case."""
        return _part_matches(self.user, user) and _part_matches(self.domain, domain)


def _part_matches(pattern: str, value: str) -> bool:
    return pattern == _ANY or pattern.casefold() == value.casefold()


@dataclass(frozen=True, slots=True)
class AllowList:
    """The ``--allow`` patterns of a server: an identity may pass if one of them matches it."""

    patterns: tuple[IdentityPattern, ...]

    @classmethod
    def parse(cls, texts: Iterable[str]) -> AllowList:
        """Parse each ``--allow`` value (see :meth:`IdentityPattern.parse`)."""
        return cls(tuple(IdentityPattern.parse(text) for text in texts))

    def permits(self, identity: str | None, protocol: str | None) -> bool:
        """True if ``identity`` (as the server's session reports it, see :func:`split_identity`) is allowed.

        A client without an identity (``None``) never is.
        """
        if identity is None:
            return False
        user, domain = split_identity(identity, protocol)
        return any(pattern.matches(user, domain) for pattern in self.patterns)


class AccessDeniedError(AuthenticationError):
    """The client authenticated, but ``serve --allow`` does not let its identity in.

    Its status, ``SEC_E_LOGON_DENIED``, is what the client's Error frame carries: .NET Framework and .NET up to 7
    report it as ``InvalidCredentialException`` ("The server has rejected the client credentials");
    ``ERROR_TRUST_FAILURE`` would tell them to raise their protection or impersonation level, which is wrong here.
    """

    def __init__(self, identity: str | None, protocol: str | None, protection: str | None) -> None:
        who = identity if identity is not None else "an anonymous client"
        super().__init__(f"{who} is not matched by any --allow", status=SEC_E_LOGON_DENIED)
        self.identity = identity
        self.protocol = protocol
        self.protection = protection

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.identity, self.protocol, self.protection))


class _GatedContext(SecurityContext):
    """A server context that refuses an identity :attr:`allow` does not permit, in the step that completes it.

    That step is the one whose token the Connection would send in HandshakeDone: raising there makes it send an
    Error frame instead (the Connection turns any handshake failure into one), so the client never sees a
    finished handshake.
    """

    allow: AllowList

    def step(self, in_token: bytes | None = None) -> bytes | None:
        """Step the context (see :meth:`SecurityContext.step`); once it completes, check the client's identity."""
        out = super().step(in_token)
        if self.is_server and self.complete:
            identity, protocol = self.peer_identity, self.negotiated_protocol
            if not self.allow.permits(identity, protocol):
                raise AccessDeniedError(identity, protocol, self.protection_level.value)
        return out


def server_context(options: dict[str, Any], allow: AllowList | None) -> SecurityContext:
    """The acceptor context of one connection, from :func:`~._credentials.server_options`; with ``allow``, one that
    refuses the identities it does not permit (:class:`AccessDeniedError`, before the final HandshakeDone)."""
    if allow is None:
        return SecurityContext.create(True, **options)
    context = _GatedContext.create(True, **options)
    assert isinstance(context, _GatedContext)  # create() builds the class it is called on
    context.allow = allow
    return context
