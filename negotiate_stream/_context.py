"""The security context: one side of a Negotiate authentication, then per-record protection.

:class:`SecurityContext` drives one side of an NTLM / Kerberos / SPNEGO authentication (``step``), then protects
and unprotects application data (``protect`` / ``unprotect``) at the negotiated protection level. It holds a
pyspnego context but imports nothing from pyspnego: building it, the per-record functions, the environment swap
for acceptors and the translation of every pyspnego exception into the :mod:`negotiate_stream.errors` hierarchy
live in the :mod:`negotiate_stream._spnego` package, the ONLY place that imports pyspnego. Nothing above this
module sees a pyspnego type or exception.

NTLM records run on :class:`~negotiate_stream._ntlm_records.NTLMRecordCipher` instead of pyspnego once the handshake
is complete (the *fast path*, see :attr:`SecurityContext.record_path`); the wire bytes are the same.

Thread-safety: pyspnego has no locks. One thread may ``protect`` while another ``unprotect``s (one encryptor and
one decryptor), *unless* :attr:`SecurityContext.shares_crypto_state` is true (NTLM without Extended Session
Security: one RC4 state for both directions), in which case every ``protect``/``unprotect`` must be serialised by
one lock. The adapters do this for you.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Literal

from ._options import (
    ChannelBindingPolicy,
    ContextOptions,
    Credentials,
    Framing,
    ImpersonationLevel,
    ProtectionLevel,
    ProtocolName,
    StreamSizes,
)
from ._spnego import records
from ._spnego.acceptor import AcceptorPolicy
from ._spnego.build import kerberos_import_error, new_context
from ._spnego.delegation import check_delegation, delegated_credentials, impersonation_level
from ._spnego.environment import acceptor_environment
from ._spnego.ntlm_takeover import NTLMFastPath, take_over
from ._spnego.ntlm_users import write_ntlm_user_file
from ._spnego.records import Buffer, ProtectFunction, RecordFunction
from ._spnego.translate import data_error, deferred_gss_error, handshake_error, kerberos_unavailable, pyspnego_text
from .errors import (
    ERROR_TRUST_FAILURE,
    SEC_E_LOGON_DENIED,
    AuthenticationError,
    IntegrityError,
    LocalProtocolError,
    NegotiateError,
    ProtectionLevelError,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["ContextOptions", "Credentials", "ProtectionLevel", "SecurityContext", "StreamSizes", "write_ntlm_user_file"]

_PROTOCOLS = ("negotiate", "ntlm", "kerberos")

#: Which code protects the records: our NTLM cipher, pyspnego, or nothing (no records, or not established yet).
RecordPath = Literal["fast", "pyspnego", "none"]


class SecurityContext:
    """One side (client or server) of a Negotiate security context.

    Build it with :meth:`client` or :meth:`server` (or :meth:`create`), call :meth:`step` with each token from
    the peer until :attr:`complete`, then :meth:`protect` outgoing and :meth:`unprotect` incoming records.

    ``protocol="kerberos"`` needs the ``kerberos`` extra (``pip install 'negotiate-stream[kerberos]'``); without it
    creating the context raises :class:`~negotiate_stream.errors.KerberosUnavailableError`, and so does the first
    :meth:`step` of ``"negotiate"`` with ``allow_ntlm_fallback=False``. Plain ``"negotiate"`` then uses NTLM.

    NTLM with Extended Session Security (the default everywhere) protects its records on the library's own
    MS-NLMP cipher, 2.5 to 4 times faster than pyspnego for small records and byte-identical on the wire; the
    handshake always stays in pyspnego, and any other case (Kerberos, NTLM without ESS, a pyspnego whose private
    state is not what the takeover expects) keeps pyspnego. Setting the environment variable
    ``NEGOTIATE_STREAM_NTLM_FAST_PATH=0`` forces pyspnego; it is read when a context completes its handshake.
    :attr:`record_path` tells which one a context uses.
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
        ntlm_seal_sign_only: bool | None = None,
        channel_binding_policy: ChannelBindingPolicy = "mechanism",
        allowed_spns: Collection[str] | None = None,
        delegate: bool = False,
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
        self._framing: Framing = "nns"  # until a Connection says otherwise (set_framing)
        self._credentials = credentials or Credentials()
        self._protection_level: ProtectionLevel | None = None
        self._protect: ProtectFunction = records.not_ready
        self._unprotect: RecordFunction = records.not_ready
        self._rejected: NegotiateError | None = None
        self._fast: NTLMFastPath | None = None  # our NTLM ciphers once they took the records over from pyspnego
        # Server-only and client-only options are ignored on the other side, as in .NET, so that one option set
        # can configure both ends.
        self._policy = AcceptorPolicy(channel_binding_policy, channel_bindings, allowed_spns) if server_side else None
        self.delegate = delegate and not server_side
        self._impersonation: ImpersonationLevel = "impersonation"
        self._delegated: Credentials | None = None
        self._ctx = new_context(
            server_side=server_side,
            credentials=self._credentials,
            target=target,
            protocol=protocol,
            level=self.required_protection_level,
            channel_bindings=None if server_side else channel_bindings,  # an acceptor gets them at each step
            delegate=self.delegate,
        )
        # Negotiate without the Kerberos extra can only pick NTLM. Refused at the first step, not here, which is
        # where the refused fallback surfaces on a machine with Kerberos, so both fail at the same point.
        self._kerberos_missing: ImportError | None = None
        if protocol == "negotiate" and not allow_ntlm_fallback:
            self._kerberos_missing = kerberos_import_error()

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
        if self._kerberos_missing is not None:  # before pyspnego produces a token that could only be NTLM
            raise kerberos_unavailable(str(self._kerberos_missing), fallback_disabled=True) from self._kerberos_missing
        bindings = self._policy.bindings_for(in_token) if self._policy is not None else None
        try:
            with acceptor_environment(self._credentials if self.is_server else None):
                out = self._ctx.step(in_token, channel_bindings=bindings)
        except Exception as exc:  # pyspnego raises SpnegoError, ValueError, struct.error... on bad tokens
            raise handshake_error(deferred_gss_error(self._ctx) or exc, self.is_server, token=in_token) from exc
        if not self.allow_ntlm_fallback and self.negotiated_protocol == "ntlm":
            raise AuthenticationError(
                "the peer offered only NTLM but NTLM fallback is disabled (allow_ntlm_fallback=False); "
                "make Kerberos work (SPN, keytab, ticket) or allow NTLM",
                status=SEC_E_LOGON_DENIED,
            )
        if self.delegate:  # before the AP-REQ without a forwarded ticket leaves (or NTLM goes on)
            check_delegation(self._ctx, self.negotiated_protocol)
        if self._ctx.complete and self._protection_level is None:
            self._finish()
        return bytes(out) if out is not None else None

    def _finish(self) -> None:
        protocol = self.negotiated_protocol
        ntlm = self._policy.ntlm if self._policy is not None else None
        if self._policy is not None:  # first, as .NET checks the service names first
            self._policy.enforce(self._ctx, protocol)
        level = records.negotiated_level(self._ctx)
        if level.rank < self.required_protection_level.rank:
            raise ProtectionLevelError(
                f"the peer negotiated protection level {level.value!r} but {self.required_protection_level.value!r}"
                " is required: configure both sides with the same protection level",
                # What a .NET server reports for the mismatch (in its HandshakeError frame).
                status=ERROR_TRUST_FAILURE if self.is_server else None,
            )
        if self.require_mutual_auth and not self.is_mutually_authenticated:
            raise AuthenticationError(
                f"mutual authentication was required but {self.negotiated_protocol} did not provide it "
                "(NTLM never does): use Kerberos or drop require_mutual_auth",
                status=SEC_E_LOGON_DENIED,
            )
        self._impersonation = impersonation_level(self._ctx, protocol, ntlm)
        if self.is_server and self._impersonation == "delegation":
            self._delegated = delegated_credentials(self._ctx, self.peer_identity)
        self._protection_level = level
        # Once, at completion: the ciphers continue where pyspnego's record state stands right now.
        self._fast = take_over(self._ctx)
        self._bind_protection(level)

    def _bind_protection(self, level: ProtectionLevel) -> None:
        # Choose the per-record functions once, so the hot path has no branching on level or mechanism.
        layout = records.ntlm_sign_layout(self.negotiated_protocol, self.ntlm_seal_sign_only, self._framing)
        functions = records.record_functions(self._ctx, level, ntlm_sign_layout=layout, fast=self._fast)
        self._protect, self._unprotect = functions or (records.no_protection, records.no_protection)
        if self._rejected is not None:  # a rejection stays sticky whatever the functions become
            self._unprotect = records.refused(self._rejected)

    def set_framing(self, framing: Framing) -> None:
        """Say which framing carries the records (:class:`~negotiate_stream.Connection` does, before the first one):
        with ``ntlm_seal_sign_only=None`` it picks the NTLM sign layout, sealed under SASL (:class:`ContextOptions`)."""
        if framing not in ("nns", "sasl"):
            raise ValueError("framing must be 'nns' or 'sasl'")
        self._framing = framing
        if self._protection_level is not None:
            self._bind_protection(self._protection_level)

    # -- data ----------------------------------------------------------------------------------------------------

    def protect(self, plaintext: Buffer) -> bytes:
        """Sign (and encrypt) one record's plaintext (any bytes-like object, read during the call only); returns the
        record payload (signature + data)."""
        prefix, body = self.protect_parts(plaintext)
        return prefix + body

    def protect_parts(self, plaintext: Buffer) -> tuple[bytes, Buffer]:
        """:meth:`protect` as ``(prefix, body)`` whose concatenation is the payload, e.g. (signature, ciphertext):
        a framing joins its header and both in one copy. ``body`` may be ``plaintext`` itself (copy it at once)."""
        try:
            return self._protect(plaintext)
        except NegotiateError:
            raise
        except Exception as exc:
            raise data_error(exc, "cannot protect outgoing data") from exc

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
            self._reject(exc)
            raise
        except Exception as exc:
            error = data_error(
                exc, "a record failed its integrity check (tampered, replayed, reordered or dropped record)"
            )
            self._reject(error)
            raise error from exc

    def _reject(self, error: NegotiateError) -> None:
        # Sticky for records and wrapped messages alike: pyspnego would accept the next valid record after some
        # failures, the NTLM fast path after none, and neither may be trusted again. The refusals that follow keep
        # naming the first failure, not each other.
        if self._rejected is None:
            self._rejected = error
            self._unprotect = records.refused(error)

    def wrap_message(self, message: bytes, *, encrypt: bool = False) -> bytes:
        """Wrap one message outside the record stream, e.g. the RFC 4752 SASL GSSAPI security-layer message.

        Returns a GSS wrap token, sealed only if ``encrypt`` (RFC 4752 wants ``conf_flag`` false). It shares the
        context's sequence numbers with :meth:`protect`, so call it in protocol order. Raises
        :class:`LocalProtocolError` before the handshake completes, :class:`IntegrityError` if wrapping fails.
        """
        if self._protection_level is None:
            raise LocalProtocolError("cannot wrap a message before the security context is established")
        try:
            return records.wrap_message(self._ctx, message, encrypt, self._fast)
        except Exception as exc:
            raise IntegrityError(f"cannot wrap the message: {pyspnego_text(exc)}", status=None) from exc

    def unwrap_message(self, token: bytes) -> bytes:
        """Verify (and decrypt, if sealed) one wrap token made by the peer's :meth:`wrap_message`.

        Raises :class:`IntegrityError` if the token fails verification; the context then refuses every later
        record and message, as after a rejected record (:meth:`unprotect`).
        """
        if self._protection_level is None:
            raise LocalProtocolError("cannot unwrap a message before the security context is established")
        if self._rejected is not None:
            raise records.refusal(self._rejected)
        try:
            return records.unwrap_message(self._ctx, token, self._fast)
        except Exception as exc:
            error = IntegrityError(f"the peer's wrapped message failed verification: {pyspnego_text(exc)}")
            self._reject(error)
            raise error from exc

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
    def record_path(self) -> RecordPath:
        """Which code protects this context's records: ``"fast"``, ``"pyspnego"`` or ``"none"``.

        ``"fast"``: NTLM records (and :meth:`wrap_message`) run on the library's own cipher; ``"pyspnego"``: on
        pyspnego (Kerberos, NTLM without Extended Session Security, ``NEGOTIATE_STREAM_NTLM_FAST_PATH=0``, or a
        refused takeover); ``"none"``: no records, before the handshake completes or at protection level none.
        """
        if self._protection_level is None or self._protection_level is ProtectionLevel.NONE:
            return "none"
        return "fast" if self._fast is not None else "pyspnego"

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
        return records.is_mutually_authenticated(self._ctx)

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
    def impersonation_level(self) -> ImpersonationLevel:
        """Once complete: ``"delegation"`` (Kerberos forwarded the client's TGT), ``"identification"`` (the client
        allowed identification only) or ``"impersonation"``, as .NET's ``ImpersonationLevel``."""
        return self._impersonation

    @property
    def delegated_credentials(self) -> Credentials | None:
        """Server side: the client's forwarded Kerberos ticket, usable as the credentials of outgoing connections."""
        return self._delegated

    @property
    def shares_crypto_state(self) -> bool:
        """True for NTLM without Extended Session Security: both directions share one RC4 state and counter."""
        return self.negotiated_protocol == "ntlm" and records.shares_crypto_state(self._ctx)

    def stream_sizes(self, max_message: int) -> StreamSizes:
        """Sizes of the per-record overhead for this context; ``max_message`` comes from the framing."""
        header = 0 if self.protection_level is ProtectionLevel.NONE else records.header_size(self._ctx)
        return StreamSizes(header=header, trailer=0, max_message=max_message)

    def __repr__(self) -> str:
        role = "server" if self.is_server else "client"
        state = "complete" if self.complete else "handshaking"
        return (
            f"<SecurityContext {role} protocol={self.negotiated_protocol or self.requested_protocol} "
            f"target={self.target!r} {state}>"
        )
