"""The security context: the ONLY module that talks to pyspnego.

:class:`SecurityContext` drives one side of an NTLM / Kerberos / SPNEGO authentication (``step``), then protects
and unprotects application data (``protect`` / ``unprotect``) at the negotiated protection level. Every pyspnego
exception is translated here into the :mod:`negotiate_stream.errors` hierarchy; nothing above this module sees a
pyspnego type.

Thread-safety: pyspnego has no locks. One thread may ``protect`` while another ``unprotect``s (one encryptor and
one decryptor), *unless* :attr:`SecurityContext.shares_crypto_state` is true (NTLM without Extended Session
Security: one RC4 state for both directions), in which case every ``protect``/``unprotect`` must be serialised by
one lock. The adapters do this for you.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import spnego
import spnego.exceptions as spnego_errors
from spnego import ContextReq
from spnego._ntlm import NTLMProxy as _NTLMProxy
from spnego.channel_bindings import GssChannelBindings

from ._options import ContextOptions, Credentials, ProtectionLevel, ProtocolName, StreamSizes
from .errors import (
    SEC_E_INVALID_TOKEN,
    SEC_E_LOGON_DENIED,
    AuthenticationError,
    ChannelBindingError,
    ContextExpiredError,
    IntegrityError,
    LocalProtocolError,
    NegotiateError,
    ProtectionLevelError,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "ContextOptions",
    "Credentials",
    "ProtectionLevel",
    "SecurityContext",
    "StreamSizes",
    "write_ntlm_user_file",
]

_PROTOCOLS = ("negotiate", "ntlm", "kerberos")
SEC_E_NO_CREDENTIALS = 0x8009030E
_NTLM_ESS_FLAG = 0x00080000  # NTLMSSP_NEGOTIATE_EXTENDED_SESSIONSECURITY
_NTLM_SIGNATURE_SIZE = 16
#: What protect() and unprotect() read: any contiguous bytes-like object.
Buffer = bytes | bytearray | memoryview


# pyspnego's NTLM acceptor only reads credentials from $NTLM_USER_FILE at step time; an explicit per-server file is
# swapped into the environment around each acceptor step under this lock, and restored afterwards.
_ENV_LOCK = threading.RLock()  # re-entrant: an acceptor swaps NTLM_USER_FILE and KRB5_KTNAME together


@contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
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


def write_ntlm_user_file(path: str, users: Iterable[tuple[str, str, str]]) -> None:
    """Write an NTLM acceptor user file for ``(domain, user, password)`` triples.

    Lines are smbpasswd-style (``DOMAIN\\user:0:LMHASH:NTHASH:[U]:LCT-0``) with the hashes precomputed, which
    makes each acceptor handshake about three times cheaper than the plain ``DOMAIN:USER:PASSWORD`` form and
    allows any character in the password. The file is created with mode 0600.
    """
    from spnego._ntlm_raw.crypto import lmowfv1, ntowfv1  # only for hashing; still inside the pyspnego border

    lines = []
    for domain, user, password in users:
        if any(ch in f"{domain}{user}" for ch in ":\\\n\r"):
            raise ValueError("NTLM domain and user names may not contain ':', '\\' or line breaks")
        lm_hash = lmowfv1(password).hex().upper()
        nt_hash = ntowfv1(password).hex().upper()
        lines.append(f"{domain}\\{user}:0:{lm_hash}:{nt_hash}:[U          ]:LCT-00000000\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.writelines(lines)


def _split_target(target: str) -> tuple[str, str]:
    """``"HTTP/web.example.com"`` -> ``("HTTP", "web.example.com")``; a bare host name means service ``host``."""
    service, sep, host = target.partition("/")
    if not sep:
        return "host", target
    if not service or not host:
        raise ValueError(f"target {target!r} is not a service principal name like 'host/server.example.com'")
    return service, host.split("@", 1)[0]


def _context_req(level: ProtectionLevel) -> ContextReq:
    flags = ContextReq.mutual_auth
    if level is ProtectionLevel.NONE:
        # Request neither sign nor seal so that the peer (e.g. .NET) also sees ProtectionLevel.None and does not
        # frame the data; no_integrity stops Kerberos from adding integrity on its own.
        return flags | ContextReq.no_integrity
    flags |= ContextReq.integrity | ContextReq.replay_detect | ContextReq.sequence_detect
    if level is ProtectionLevel.ENCRYPT_AND_SIGN:
        flags |= ContextReq.confidentiality
    return flags


def _handshake_error(exc: BaseException, server_side: bool) -> NegotiateError:
    """Translate a pyspnego (or parser) failure during the handshake."""
    if isinstance(exc, spnego_errors.BadBindingsError):
        return ChannelBindingError(
            "channel bindings do not match: the TLS channel seen by the peer is not ours (possible "
            "man-in-the-middle), or one side did not supply bindings"
        )
    if isinstance(exc, spnego_errors.ContextExpiredError | spnego_errors.CredentialsExpiredError):
        return AuthenticationError(
            "the credentials or ticket have expired: renew them (kinit) and connect again",
            status=0x80090317,
        )
    if isinstance(exc, spnego_errors.NoCredentialError | spnego_errors.OperationNotAvailableError):
        where = "acceptor credentials (NTLM user file or keytab)" if server_side else "client credentials"
        return AuthenticationError(f"no usable {where}: {_pyspnego_context(exc)}", status=SEC_E_NO_CREDENTIALS)
    kerberos_problem = _kerberos_problem(_pyspnego_context(exc))
    if kerberos_problem is not None:
        return kerberos_problem
    if isinstance(exc, spnego_errors.SpnegoError):
        who = "the client's" if server_side else "our"
        return AuthenticationError(
            f"authentication failed: {who} credentials were rejected or are unknown to the acceptor "
            f"({_pyspnego_context(exc)}); check user name, domain and password",
            status=SEC_E_LOGON_DENIED,
        )
    return AuthenticationError(
        f"the peer sent a malformed authentication token ({type(exc).__name__}: {exc})",
        status=SEC_E_INVALID_TOKEN,
    )


# MIT Kerberos messages that name a configuration problem rather than bad credentials.
_KERBEROS_PROBLEMS = (
    (
        "not found in Kerberos database",
        0x80090303,  # SEC_E_TARGET_UNKNOWN
        "the KDC does not know the target service principal: check `target` (service/host, e.g. "
        "HTTP/web.example.com) and that this SPN is registered",
    ),
    (
        "Cannot find KDC",
        0x80090311,  # SEC_E_NO_AUTHENTICATING_AUTHORITY
        "no KDC is configured for the realm: check krb5.conf (KRB5_CONFIG) or DNS SRV records",
    ),
    (
        "Cannot contact any KDC",
        0x80090311,
        "the realm's KDC does not answer: check that it runs and is reachable",
    ),
    (
        "Clock skew too great",
        0x80090324,  # SEC_E_TIME_SKEW
        "the clocks of this host and the KDC or peer differ too much: synchronise them",
    ),
)


def _kerberos_problem(text: str) -> AuthenticationError | None:
    for marker, status, advice in _KERBEROS_PROBLEMS:
        if marker in text:
            return AuthenticationError(f"Kerberos failed: {advice} ({text})", status=status)
    return None


def _failed(error: NegotiateError) -> Callable[[Buffer], bytes]:
    """An unprotect function that refuses everything after ``error`` (a context never recovers from a bad record)."""

    def refuse(payload: Buffer) -> bytes:
        raise IntegrityError(f"the security context already rejected a record ({error}); open a new connection")

    return refuse


def _data_error(exc: Exception, what: str) -> NegotiateError:
    """Translate a pyspnego failure while protecting or unprotecting a record."""
    if isinstance(exc, spnego_errors.ContextExpiredError):
        return ContextExpiredError("the security context expired: reconnect and authenticate again")
    return IntegrityError(f"{what}: {_pyspnego_context(exc)}")


def _pyspnego_context(exc: BaseException) -> str:
    return str(getattr(exc, "message", None) or exc)


class SecurityContext:
    """One side (client or server) of a Negotiate security context.

    Build it with :meth:`client` or :meth:`server` (or :meth:`create`), call :meth:`step` with each token from
    the peer until :attr:`complete`, then :meth:`protect` outgoing and :meth:`unprotect` incoming records.
    """

    def __init__(
        self,
        *,
        server_side: bool,
        credentials: Credentials | None = None,
        target: str = "host/localhost",
        protocol: ProtocolName = "negotiate",
        protection_level: ProtectionLevel | str = ProtectionLevel.ENCRYPT_AND_SIGN,
        channel_bindings: bytes | None = None,
        require_mutual_auth: bool = False,
        allow_ntlm_fallback: bool = True,
        ntlm_seal_sign_only: bool = False,
    ) -> None:
        if protocol not in _PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}: use 'negotiate', 'ntlm' or 'kerberos'")
        self.is_server = server_side
        self.target = target
        self.requested_protocol: ProtocolName = protocol
        self.required_protection_level = ProtectionLevel.parse(protection_level)
        self.require_mutual_auth = require_mutual_auth
        self.allow_ntlm_fallback = allow_ntlm_fallback
        self.ntlm_seal_sign_only = ntlm_seal_sign_only
        self._credentials = credentials or Credentials()
        self._protection_level: ProtectionLevel | None = None
        self._protect: Callable[[Buffer], bytes] = self._not_ready
        self._unprotect: Callable[[Buffer], bytes] = self._not_ready
        service, host = _split_target(target)
        bindings = GssChannelBindings(application_data=channel_bindings) if channel_bindings is not None else None
        context_req = _context_req(self.required_protection_level)
        try:
            if server_side:
                self._ctx = self._new_server(service, host, bindings, context_req)
            else:
                self._ctx = self._new_client(service, host, bindings, context_req)
        except (spnego_errors.SpnegoError, spnego_errors.FeatureMissingError, ValueError) as exc:
            raise AuthenticationError(
                f"cannot create the {protocol} {'acceptor' if server_side else 'initiator'} context: "
                f"{_pyspnego_context(exc)}",
                status=SEC_E_NO_CREDENTIALS,
            ) from exc
        except Exception as exc:
            if not type(exc).__module__.startswith("krb5"):
                raise
            # pyspnego's kinit for a password or client keytab raises the krb5 package's own error.
            problem = _kerberos_problem(str(exc))
            if problem is not None:
                raise problem from exc
            raise AuthenticationError(
                f"the Kerberos KDC refused to issue a ticket for {self._credentials.principal!r}: {exc}; check the "
                "user principal (user@REALM), the password or keytab, and that the KDC of the realm is reachable",
                status=SEC_E_LOGON_DENIED,
            ) from exc

    def _new_client(self, service: str, host: str, bindings: GssChannelBindings | None, context_req: ContextReq) -> Any:
        creds = self._credentials
        username: Any = creds.principal
        if creds.password is not None and creds.domain and creds.username and not {"\\", "@"} & set(creds.username):
            username = self._domain_user_credentials(creds.username, creds.domain, creds.password)
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
            context_req=context_req,
            protocol=self.requested_protocol,
        )
        if self.requested_protocol == "ntlm" and self.required_protection_level is ProtectionLevel.NONE:
            # Without sign/seal pyspnego still offers KEY_EXCH and then sends a 1-byte EncryptedRandomSessionKey,
            # which gss-ntlmssp (.NET on Linux) and Samba reject with a logon failure. Windows/.NET clients do not
            # offer KEY_EXCH at ProtectionLevel.None (captures/ntlm-none-hello.txt): neither do we.
            from spnego._ntlm_raw.messages import NegotiateFlags

            context._context_req &= ~NegotiateFlags.key_exch
        return context

    def _domain_user_credentials(self, user: str, domain: str, password: str) -> Any:
        """``username`` + ``domain`` as in .NET: ``user@DOMAIN`` for Kerberos, ``DOMAIN\\user`` for NTLM.

        pyspnego hands one user name to both mechanisms and Kerberos cannot parse ``DOMAIN\\user``; an NTLM-only
        hash credential listed first keeps the NTLM form while the password credential serves Kerberos.
        """
        kerberos = spnego.Password(username=f"{user}@{domain.upper()}", password=password)
        if self.requested_protocol == "kerberos":
            return kerberos
        if self.requested_protocol == "ntlm":
            return f"{domain}\\{user}"
        from spnego._ntlm_raw.crypto import lmowfv1, ntowfv1  # hashing only; still inside the pyspnego border

        # Both hashes: with LM_COMPAT_LEVEL=0 (no ESS) the session key is derived from the LM hash too.
        ntlm = spnego.NTLMHash(
            username=f"{domain}\\{user}", lm_hash=lmowfv1(password).hex(), nt_hash=ntowfv1(password).hex()
        )
        return [ntlm, kerberos]

    def _new_server(self, service: str, host: str, bindings: GssChannelBindings | None, context_req: ContextReq) -> Any:
        creds = self._credentials
        # pyspnego's KerberosKeytab only serves initiators (a kinit from a keytab); an acceptor gets its keytab
        # the MIT way, from $KRB5_KTNAME, which GSSAPI reads when the acceptor credential is acquired (here).
        with _environment("NTLM_USER_FILE", creds.ntlm_user_file), _environment("KRB5_KTNAME", creds.keytab):
            return spnego.server(
                hostname=host,
                service=service,
                channel_bindings=bindings,
                context_req=context_req,
                protocol=self.requested_protocol,
            )

    @classmethod
    def client(cls, **options: Unpack[ContextOptions]) -> SecurityContext:
        """An initiator; see :class:`ContextOptions` for the keyword options."""
        return cls(server_side=False, **options)

    @classmethod
    def server(cls, **options: Unpack[ContextOptions]) -> SecurityContext:
        """An acceptor; see :class:`ContextOptions` for the keyword options."""
        return cls(server_side=True, **options)

    @classmethod
    def create(cls, server_side: bool, **options: Unpack[ContextOptions]) -> SecurityContext:
        """A client or server context; what every adapter calls with its keyword options."""
        return cls(server_side=server_side, **options)

    # -- handshake ---------------------------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        """True once the local context is established (the peer may still need our last token)."""
        return bool(self._ctx.complete)

    def step(self, in_token: bytes | None = None) -> bytes | None:
        """Process the peer's token (``None`` for the client's first call); return the token to send, if any.

        Raises :class:`AuthenticationError` (or a subclass) when authentication fails. When this call completes
        the context, the negotiated protection level is checked against the required one
        (:class:`ProtectionLevelError`) and, if asked, mutual authentication (:class:`AuthenticationError`).
        """
        try:
            acceptor = self._credentials if self.is_server else Credentials()
            # SPNEGO acceptors build their mechanism contexts at the first step: both variables must be in place.
            with _environment("NTLM_USER_FILE", acceptor.ntlm_user_file), _environment("KRB5_KTNAME", acceptor.keytab):
                out = self._ctx.step(in_token)
        except Exception as exc:  # pyspnego raises SpnegoError, ValueError, struct.error... on bad tokens
            raise _handshake_error(self._deferred_gss_error() or exc, self.is_server) from exc
        if not self.allow_ntlm_fallback and self.negotiated_protocol == "ntlm":
            raise AuthenticationError(
                "the peer offered only NTLM but NTLM fallback is disabled (allow_ntlm_fallback=False); "
                "make Kerberos work (SPN, keytab, ticket) or allow NTLM",
                status=SEC_E_LOGON_DENIED,
            )
        if self._ctx.complete and self._protection_level is None:
            self._finish()
        return bytes(out) if out is not None else None

    def _deferred_gss_error(self) -> BaseException | None:
        """The GSSAPI error hidden behind a failed Kerberos acceptor step, translated by pyspnego, if any.

        pyspnego asks python-gssapi to defer step errors (to return the KRB-ERROR token); a failed accept (bad
        channel bindings, unknown key, replay...) then surfaces as an AttributeError on the half-built context.
        """
        try:
            deferred = getattr(getattr(self._mechanism(), "_context", None), "_last_err", None)
        except Exception:  # SPNEGO has not chosen a mechanism yet
            return None
        if not isinstance(deferred, Exception):
            return None
        try:
            return spnego_errors.SpnegoError(base_error=deferred)  # picks the subclass (BadBindingsError, ...)
        except ValueError:
            return deferred

    def _finish(self) -> None:
        attr = self._ctx.context_attr
        if attr & ContextReq.confidentiality:
            level = ProtectionLevel.ENCRYPT_AND_SIGN
        elif attr & ContextReq.integrity:
            level = ProtectionLevel.SIGN
        else:
            level = ProtectionLevel.NONE
        if level.rank < self.required_protection_level.rank:
            raise ProtectionLevelError(
                f"the peer negotiated protection level {level.value!r} but {self.required_protection_level.value!r}"
                " is required: configure both sides with the same protection level",
                status=0x000006FE if self.is_server else None,
            )
        if self.require_mutual_auth and not self.is_mutually_authenticated:
            raise AuthenticationError(
                f"mutual authentication was required but {self.negotiated_protocol} did not provide it "
                "(NTLM never does): use Kerberos or drop require_mutual_auth",
                status=SEC_E_LOGON_DENIED,
            )
        self._protection_level = level
        self._bind_protection(level)

    def _mechanism(self) -> Any:
        """The pyspnego proxy of the negotiated mechanism (NTLMProxy or GSSAPIProxy), skipping SPNEGO's wrapper.

        Only a NegotiateProxy's ``_context`` is the chosen mechanism's proxy; a GSSAPIProxy's ``_context`` is the
        raw python-gssapi context, whose wrap() returns another type, so it is never unwrapped.
        """
        inner = getattr(self._ctx, "_context", None)
        return inner if isinstance(inner, spnego.ContextProxy) else self._ctx

    def _bind_protection(self, level: ProtectionLevel) -> None:
        # Choose the per-record functions once, so the hot path has no branching on level or mechanism.
        inner = self._mechanism()
        # pyspnego's own NTLM code (RC4 and HMAC from cryptography/hashlib) reads any buffer, so records go in as
        # memoryviews of the caller's buffers, uncopied; python-gssapi (Kerberos) takes bytes only.
        wrap: Callable[[Buffer, bool], Any]
        unwrap: Callable[[Buffer], Any]
        if isinstance(inner, _NTLMProxy):
            wrap, unwrap = cast(Any, inner.wrap), cast(Any, inner.unwrap)  # typed as bytes, reads any buffer
        else:
            gss_wrap, gss_unwrap = inner.wrap, inner.unwrap

            def gss_wrap_bytes(data: Buffer, encrypt: bool) -> Any:
                return gss_wrap(bytes(data), encrypt)

            def gss_unwrap_bytes(payload: Buffer) -> Any:
                return gss_unwrap(bytes(payload))

            wrap, unwrap = gss_wrap_bytes, gss_unwrap_bytes

        if level is ProtectionLevel.ENCRYPT_AND_SIGN:

            def protect(data: Buffer) -> bytes:
                return bytes(wrap(data, True).data)

            def unprotect(payload: Buffer) -> bytes:
                result = unwrap(payload)
                if not result.encrypted:
                    raise IntegrityError("received an unencrypted record on an encrypted stream (downgrade attempt)")
                return bytes(result.data)

        elif level is ProtectionLevel.SIGN and self.negotiated_protocol == "ntlm" and not self.ntlm_seal_sign_only:
            # pyspnego's NTLM wrap(encrypt=False) still seals: sign-only is signature + plaintext, as in .NET.
            sign, verify = cast(Any, inner.sign), cast(Any, inner.verify)  # typed as bytes, read any buffer

            def protect(data: Buffer) -> bytes:
                return bytes(sign(data)) + data

            def unprotect(payload: Buffer) -> bytes:
                if len(payload) < _NTLM_SIGNATURE_SIZE:
                    raise IntegrityError("signed record shorter than its 16-byte NTLM signature")
                with memoryview(payload) as view:
                    data = view[_NTLM_SIGNATURE_SIZE:]
                    verify(data, bytes(view[:_NTLM_SIGNATURE_SIZE]))
                    return bytes(data)  # the one copy: the caller's buffer is reused after this call

        elif level is ProtectionLevel.SIGN:
            # Kerberos: RFC 4121 integrity-only tokens. NTLM with ntlm_seal_sign_only: pyspnego's wrap() seals,
            # which is what gss-ntlmssp (.NET on Linux/macOS) puts on the wire at ProtectionLevel.Sign.

            def protect(data: Buffer) -> bytes:
                return bytes(wrap(data, False).data)

            def unprotect(payload: Buffer) -> bytes:
                # Sealed records are accepted too: MIT Kerberos always sets the confidentiality flag, so a
                # .NET "Sign" peer on Linux seals.
                return bytes(unwrap(payload).data)

        else:
            self._protect = self._unprotect = self._no_protection
            return
        self._protect, self._unprotect = protect, unprotect

    @staticmethod
    def _not_ready(data: Buffer) -> bytes:
        raise LocalProtocolError("the security context is not established yet: finish the handshake first")

    @staticmethod
    def _no_protection(data: Buffer) -> bytes:
        raise LocalProtocolError("protection level is 'none': data is not wrapped, send it as is")

    # -- data ----------------------------------------------------------------------------------------------------

    def protect(self, plaintext: Buffer) -> bytes:
        """Sign (and encrypt) one record's plaintext; returns the record payload (signature + data).

        ``plaintext`` may be any bytes-like object; it is read during the call only.
        """
        try:
            return self._protect(plaintext)
        except NegotiateError:
            raise
        except Exception as exc:
            raise _data_error(exc, "cannot protect outgoing data") from exc

    def unprotect(self, payload: Buffer) -> bytes:
        """Verify (and decrypt) one record payload; returns the plaintext or raises :class:`IntegrityError`.

        ``payload`` may be any bytes-like object (e.g. a memoryview of a receive buffer); it is read during the call
        only, and the result never refers to it.

        After a failure the context's sequence/cipher state is unusable: the caller must treat the stream as
        broken (never retry).
        """
        try:
            return self._unprotect(payload)
        except NegotiateError as exc:
            self._unprotect = _failed(exc)  # sticky: pyspnego itself would accept the next valid record
            raise
        except Exception as exc:
            error = _data_error(
                exc, "a record failed its integrity check (tampered, replayed, reordered or dropped record)"
            )
            self._unprotect = _failed(error)
            raise error from exc

    def wrap_message(self, message: bytes, *, encrypt: bool = False) -> bytes:
        """Wrap one message outside the record stream, e.g. the RFC 4752 SASL GSSAPI security-layer message.

        Returns a GSS wrap token, sealed only if ``encrypt`` (RFC 4752 wants ``conf_flag`` false). It shares the
        context's sequence numbers with :meth:`protect`, so call it in protocol order. Raises
        :class:`LocalProtocolError` before the handshake completes, :class:`IntegrityError` if wrapping fails.
        """
        if self._protection_level is None:
            raise LocalProtocolError("cannot wrap a message before the security context is established")
        try:
            return bytes(self._mechanism().wrap(message, encrypt).data)
        except Exception as exc:
            raise IntegrityError(f"cannot wrap the message: {_pyspnego_context(exc)}", status=None) from exc

    def unwrap_message(self, token: bytes) -> bytes:
        """Verify (and decrypt, if sealed) one wrap token made by the peer's :meth:`wrap_message`.

        Raises :class:`IntegrityError` if the token fails verification (the context is then unusable).
        """
        if self._protection_level is None:
            raise LocalProtocolError("cannot unwrap a message before the security context is established")
        try:
            return bytes(self._mechanism().unwrap(token).data)
        except Exception as exc:
            raise IntegrityError(f"the peer's wrapped message failed verification: {_pyspnego_context(exc)}") from exc

    def select_protection_level(self, level: ProtectionLevel | str) -> None:
        """Protect the records from now on at ``level``, which both sides agreed out of band.

        SASL GSSAPI (RFC 4752) chooses the security layer after the context is established, and MIT Kerberos
        always grants confidentiality, so the negotiated level can be higher than the agreed layer. ``level`` may
        not exceed the negotiated level (:class:`ProtectionLevelError`) nor fall below the required one.
        """
        chosen = ProtectionLevel.parse(level)
        negotiated = self.protection_level
        if chosen.rank > negotiated.rank or chosen.rank < self.required_protection_level.rank:
            raise ProtectionLevelError(
                f"cannot use protection level {chosen.value!r}: the context negotiated {negotiated.value!r} and "
                f"{self.required_protection_level.value!r} is required"
            )
        self._protection_level = chosen
        self._bind_protection(chosen)

    # -- negotiated properties --------------------------------------------------------------------------------

    @property
    def protection_level(self) -> ProtectionLevel:
        """The negotiated protection level (available once complete)."""
        if self._protection_level is None:
            raise LocalProtocolError("the protection level is known only after the handshake completes")
        return self._protection_level

    @property
    def negotiated_protocol(self) -> str | None:
        """``"ntlm"`` or ``"kerberos"`` once known, else ``None``."""
        try:
            name = self._ctx.negotiated_protocol
        except Exception:  # pyspnego raises before a mechanism is chosen on some providers
            return None
        return str(name) if name else None

    @property
    def is_mutually_authenticated(self) -> bool:
        """True when the server proved its identity too (Kerberos); NTLM never is."""
        return bool(self._ctx.complete and self._ctx.context_attr & ContextReq.mutual_auth)

    @property
    def peer_identity(self) -> str | None:
        """Server side: the authenticated client (``DOMAIN\\user`` or ``user@REALM``). Client side: the target."""
        if not self._ctx.complete:
            return None
        if self.is_server:
            principal = self._ctx.client_principal
            return str(principal) if principal else None
        return self.target

    @property
    def shares_crypto_state(self) -> bool:
        """True for NTLM without Extended Session Security: both directions share one RC4 state and counter."""
        if self.negotiated_protocol != "ntlm":
            return False
        inner = self._mechanism()
        return not int(getattr(inner, "_context_attr", _NTLM_ESS_FLAG)) & _NTLM_ESS_FLAG

    def stream_sizes(self, max_message: int) -> StreamSizes:
        """Sizes of the per-record overhead for this context; ``max_message`` comes from the framing."""
        level = self.protection_level
        if level is ProtectionLevel.NONE:
            return StreamSizes(header=0, trailer=0, max_message=max_message)
        try:
            header = int(self._ctx.query_message_sizes().header)
        except Exception:
            header = _NTLM_SIGNATURE_SIZE
        return StreamSizes(header=header, trailer=0, max_message=max_message)

    def __repr__(self) -> str:
        role = "server" if self.is_server else "client"
        state = "complete" if self.complete else "handshaking"
        return (
            f"<SecurityContext {role} protocol={self.negotiated_protocol or self.requested_protocol} "
            f"target={self.target!r} {state}>"
        )
