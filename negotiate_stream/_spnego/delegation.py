"""Kerberos delegation and the impersonation level (part of the pyspnego border, see :mod:`.._spnego`).

A client asks for delegation with ``delegate=True`` (``ContextReq.delegate``: GSS_C_DELEG_FLAG). MIT Kerberos then
forwards the client's TGT inside the authenticator, but only when the TGT is forwardable; otherwise it drops the
flag and carries on. :func:`check_delegation` turns that silent downgrade into a refusal, on the step that built
the AP-REQ, before it is sent (as a .NET client that asked for ``TokenImpersonationLevel.Delegation`` fails when it
did not get it).

The acceptor receives the forwarded TGT as python-gssapi credentials. :func:`delegated_credentials` stores them in
a fresh in-process MIT ``MEMORY:`` credential cache and returns :class:`~negotiate_stream._options.Credentials`
naming it, so the server's own outgoing connections use them like any other ticket cache; the cache is destroyed
when that Credentials object is garbage-collected. Nothing is written to disk.
"""

from __future__ import annotations

import secrets
import weakref

import spnego
from spnego import ContextReq

from .._options import Credentials, ImpersonationLevel
from ..errors import ERROR_TRUST_FAILURE, AuthenticationError
from .acceptor import gss_context
from .ntlm_authenticate import NTLMAuthenticate

__all__ = ["check_delegation", "delegated_credentials", "impersonation_level"]

_MEMORY_CCACHE_PREFIX = "MEMORY:negotiate-stream-delegated-"


def impersonation_level(
    ctx: spnego.ContextProxy, protocol: str | None, ntlm: NTLMAuthenticate | None
) -> ImpersonationLevel:
    """What the client allowed (.NET ``ImpersonationLevel``): from the Kerberos flags, or the NTLM IDENTIFY flag.

    ``ntlm`` is the client's AUTHENTICATE message (an acceptor's view); without it NTLM reads as impersonation.
    """
    if protocol == "kerberos":
        attr = ctx.context_attr
        if attr & ContextReq.delegate:
            return "delegation"
        return "identification" if attr & ContextReq.identify else "impersonation"
    if ntlm is not None and ntlm.identify_only:
        return "identification"
    return "impersonation"


def check_delegation(ctx: spnego.ContextProxy, protocol: str | None) -> None:
    """Refuse a client context that asked for delegation and cannot get it (``protocol`` still unknown: wait)."""
    if protocol == "ntlm":
        raise AuthenticationError(
            "delegation was requested (delegate=True) but NTLM was negotiated, and NTLM cannot delegate: use "
            "Kerberos (a ticket, a keytab or user@REALM with a password) or drop delegate",
            status=ERROR_TRUST_FAILURE,
        )
    if protocol == "kerberos" and not ctx.context_attr & ContextReq.delegate:
        raise AuthenticationError(
            "delegation was requested (delegate=True) but Kerberos cannot forward the ticket: the TGT in the "
            "ticket cache is not forwardable (get one with kinit -f, or forwardable = true in krb5.conf) or the "
            "KDC does not allow it for this user",
            status=ERROR_TRUST_FAILURE,
        )


def delegated_credentials(ctx: spnego.ContextProxy, principal: str | None) -> Credentials | None:
    """The client's forwarded TGT as :class:`Credentials` (a ``MEMORY:`` ccache), if the acceptor received one."""
    kerberos = gss_context(ctx)
    delegated = getattr(kerberos, "delegated_creds", None) if kerberos is not None else None
    if delegated is None:
        return None
    import gssapi.raw  # present: a gssapi context gave us the credentials

    name = _MEMORY_CCACHE_PREFIX + secrets.token_hex(16)
    gssapi.raw.store_cred_into({b"ccache": name.encode()}, delegated, usage="initiate", overwrite=True)
    credentials = Credentials(username=principal, ccache=name)
    # The cache lives as long as the object that names it (the caller's SessionInfo, then any context using it).
    weakref.finalize(credentials, _destroy_ccache, name)
    return credentials


def _destroy_ccache(name: str) -> None:
    try:
        import krb5

        context = krb5.init_context()
        krb5.cc_destroy(context, krb5.cc_resolve(context, name.encode()))
    except Exception:  # at interpreter exit, or already gone: nothing is left to free
        pass
