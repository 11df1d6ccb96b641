"""Building the pyspnego context from our options (part of the pyspnego border, see :mod:`.._spnego`).

:func:`new_context` maps :class:`~negotiate_stream._options.Credentials`, the target name and the protection
level onto ``spnego.client`` / ``spnego.server``, works around the pyspnego behaviours that peers reject, and turns
every creation failure into a :mod:`negotiate_stream.errors` exception (through :mod:`.translate`).

Kerberos needs the ``kerberos`` extra (python-gssapi and krb5) except on Windows, where pyspnego uses SSPI.
:func:`kerberos_import_error` says whether it can run here; a ``"kerberos"`` context without it fails at creation
with :class:`~negotiate_stream.errors.KerberosUnavailableError` instead of pyspnego's bare ImportError.
"""

from __future__ import annotations

import importlib
from typing import Any

import spnego
from spnego import ContextReq, NegotiateOptions
from spnego._context import GSSMech
from spnego._negotiate import NegotiateProxy
from spnego._ntlm import NTLMProxy
from spnego._ntlm_raw.messages import NegotiateFlags
from spnego._sspi import SSPIProxy
from spnego.channel_bindings import GssChannelBindings

from .._options import Credentials, ProtectionLevel, ProtocolName
from ..errors import SEC_E_NO_CREDENTIALS, AuthenticationError
from .environment import acceptor_environment
from .ntlm_users import ntlm_hashes
from .translate import creation_error, kerberos_unavailable

__all__ = ["context_req", "kerberos_import_error", "new_context", "split_target"]

# What pyspnego's GSSAPIProxy imports; the `kerberos` extra (pyspnego[kerberos]) installs both.
_KERBEROS_MODULES = ("gssapi", "krb5")


def kerberos_import_error() -> ImportError | None:
    """``None`` if pyspnego can run Kerberos here, else the ImportError that stops it.

    The modules are imported afresh (a no-op once loaded) rather than read off pyspnego's import-time flag, so the
    answer follows the current ``sys.modules``: tests simulate a machine without the extra by blocking them.
    """
    if "kerberos" in SSPIProxy.available_protocols():  # Windows: SSPI provides Kerberos without python-gssapi
        return None
    for name in _KERBEROS_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            return exc
    return None


def split_target(target: str) -> tuple[str, str]:
    """``"HTTP/web.example.com"`` -> ``("HTTP", "web.example.com")``; a bare host name means service ``host``."""
    service, sep, host = target.partition("/")
    if not sep:
        return "host", target
    if not service or not host:
        raise ValueError(f"target {target!r} is not a service principal name like 'host/server.example.com'")
    return service, host.split("@", 1)[0]


def context_req(level: ProtectionLevel, *, delegate: bool = False) -> ContextReq:
    """The pyspnego context flags that ask for protection ``level`` (and mutual authentication, if possible).

    ``delegate`` asks Kerberos to forward the client's TGT; pyspnego then also gets a forwardable one from a password
    or keytab.
    """
    flags = ContextReq.mutual_auth | (ContextReq.delegate if delegate else ContextReq.none)
    if level is ProtectionLevel.NONE:
        # Request neither sign nor seal so that the peer (e.g. .NET) also sees ProtectionLevel.None and does not
        # frame the data; no_integrity stops Kerberos from adding integrity on its own.
        return flags | ContextReq.no_integrity
    flags |= ContextReq.integrity | ContextReq.replay_detect | ContextReq.sequence_detect
    if level is ProtectionLevel.ENCRYPT_AND_SIGN:
        flags |= ContextReq.confidentiality
    return flags


def new_context(
    *,
    server_side: bool,
    credentials: Credentials,
    target: str,
    protocol: ProtocolName,
    level: ProtectionLevel,
    channel_bindings: bytes | None,
    delegate: bool = False,
) -> spnego.ContextProxy:
    """A pyspnego initiator or acceptor for these options.

    An acceptor gets ``channel_bindings=None``: its bindings go to each step (:class:`.acceptor.AcceptorPolicy`).
    Raises ValueError for a malformed ``target``, :class:`~negotiate_stream.errors.KerberosUnavailableError` for
    ``"kerberos"`` without the extra, and :class:`~negotiate_stream.errors.AuthenticationError` when pyspnego (or a
    kinit for a password or keytab) cannot create the context, or for an NT hash with ``"kerberos"``.
    """
    service, host = split_target(target)
    if protocol == "kerberos":
        missing = kerberos_import_error()
        if missing is not None:
            raise kerberos_unavailable(str(missing)) from missing
        if credentials.nt_hash is not None and not server_side:
            raise AuthenticationError(
                "an NT hash authenticates with NTLM only: use protocol 'ntlm' or 'negotiate', or a password, "
                "ticket cache or keytab for Kerberos",
                status=SEC_E_NO_CREDENTIALS,
            )
    bindings = GssChannelBindings(application_data=channel_bindings) if channel_bindings is not None else None
    flags = context_req(level, delegate=delegate and not server_side)
    try:
        if server_side:
            # pyspnego's KerberosKeytab only serves initiators (a kinit from a keytab); an acceptor gets its keytab
            # the MIT way, from $KRB5_KTNAME, which GSSAPI reads when the acceptor credential is acquired (here).
            with acceptor_environment(credentials):
                return spnego.server(
                    hostname=host, service=service, channel_bindings=bindings, context_req=flags, protocol=protocol
                )
        return _new_client(
            credentials, host=host, service=service, bindings=bindings, flags=flags, protocol=protocol, level=level
        )
    except Exception as exc:
        error = creation_error(exc, protocol=protocol, server_side=server_side, principal=credentials.principal)
        if error is None:
            raise
        raise error from exc


def _new_client(
    creds: Credentials,
    *,
    host: str,
    service: str,
    bindings: GssChannelBindings | None,
    flags: ContextReq,
    protocol: ProtocolName,
    level: ProtectionLevel,
) -> spnego.ContextProxy:
    username: Any = creds.principal
    if creds.nt_hash is not None:
        # pyspnego's NTLM hash credential; its repr hides the hash, and without an LM hash NTLMv2 is used.
        username = spnego.NTLMHash(username=creds.principal or "", nt_hash=creds.nt_hash.lower())
    elif creds.password is not None and creds.domain and creds.username and not {"\\", "@"} & set(creds.username):
        username = _domain_user_credentials(creds.username, creds.domain, creds.password, protocol)
    if creds.ccache is not None:
        username = spnego.KerberosCCache(ccache=creds.ccache, principal=creds.principal)
    elif creds.keytab is not None:  # a client keytab: pyspnego gets a ticket for the principal from it
        username = spnego.KerberosKeytab(keytab=creds.keytab, principal=creds.principal)
    context = spnego.client(
        username,
        creds.password,
        hostname=host,
        service=service,
        channel_bindings=bindings,
        context_req=flags,
        protocol=protocol,
    )
    if level is ProtectionLevel.NONE:
        # Without sign/seal pyspnego still offers KEY_EXCH and then sends a 1-byte EncryptedRandomSessionKey,
        # which gss-ntlmssp (.NET on Linux), Samba and Windows reject (a logon failure; LDAP 49 "data 57"). Windows
        # and .NET clients do not offer KEY_EXCH at ProtectionLevel.None (captures/ntlm-none-hello.txt): neither
        # do we, as raw NTLM or inside SPNEGO.
        if isinstance(context, NegotiateProxy):
            context._available_contexts = _spnego_mechanisms(
                username, creds.password, host=host, service=service, bindings=bindings, flags=flags
            )
        else:
            _without_key_exch(context)
    return context


def _without_key_exch(context: spnego.ContextProxy) -> None:
    """Stop a pyspnego NTLM initiator from offering KEY_EXCH (before its NEGOTIATE message, which fixes the flags)."""
    if isinstance(context, NTLMProxy):
        context._context_req &= ~NegotiateFlags.key_exch


def _spnego_mechanisms(
    username: Any,
    password: str | None,
    *,
    host: str,
    service: str,
    bindings: GssChannelBindings | None,
    flags: ContextReq,
) -> dict[GSSMech, spnego.ContextProxy] | None:
    """The mechanism contexts pyspnego's SPNEGO initiator would build at its first step, NTLM without KEY_EXCH.

    pyspnego builds them inside its first step and steps them at once, so NTLM's NEGOTIATE message has left before
    its flags could be changed: built here and handed over (the way pyspnego's own ``new_context`` hands its
    contexts to a fresh SPNEGO context), in pyspnego's order and with its options. A mechanism that cannot be
    created is left out, as pyspnego does; ``None`` (none at all) lets pyspnego build and report the failure.
    Creating a Kerberos context may acquire credentials (a kinit), which moves that wait from the first step to
    the creation of the context; the adapters treat both as blocking work.
    """
    contexts: dict[GSSMech, spnego.ContextProxy] = {}
    for name in NegotiateProxy.available_protocols():  # Kerberos first when it can run, as pyspnego prefers it
        if name == "negotiate":
            continue
        # As pyspnego: SPNEGO needs its own NTLM (it resets the crypto state), never SSPI's.
        use_ntlm = name == "ntlm" and "ntlm" in SSPIProxy.available_protocols()
        try:
            context = spnego.client(
                username,
                password,
                hostname=host,
                service=service,
                channel_bindings=bindings,
                context_req=flags,
                protocol=name,
                options=NegotiateOptions.use_ntlm if use_ntlm else NegotiateOptions.none,
            )
        except Exception:  # e.g. no Kerberos ticket or realm for this user: SPNEGO offers the other mechanisms
            continue
        context._is_wrapped = True  # what pyspnego marks on the mechanisms of its SPNEGO contexts
        _without_key_exch(context)
        contexts[GSSMech[name]] = context
    return contexts or None


def _domain_user_credentials(user: str, domain: str, password: str, protocol: ProtocolName) -> Any:
    """``username`` + ``domain`` as in .NET: ``user@DOMAIN`` for Kerberos, ``DOMAIN\\user`` for NTLM.

    pyspnego hands one user name to both mechanisms and Kerberos cannot parse ``DOMAIN\\user``; an NTLM-only
    hash credential listed first keeps the NTLM form while the password credential serves Kerberos.
    """
    kerberos = spnego.Password(username=f"{user}@{domain.upper()}", password=password)
    if protocol == "kerberos":
        return kerberos
    if protocol == "ntlm":
        return f"{domain}\\{user}"
    lm_hash, nt_hash = ntlm_hashes(password)
    # Both hashes: with LM_COMPAT_LEVEL=0 (no ESS) the session key is derived from the LM hash too.
    ntlm = spnego.NTLMHash(username=f"{domain}\\{user}", lm_hash=lm_hash.hex(), nt_hash=nt_hash.hex())
    return [ntlm, kerberos]
