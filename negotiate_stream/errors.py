"""The exception hierarchy of negotiate_stream.

Every error the library raises is a :class:`NegotiateError`. The tree tells you whose fault it is:

* :class:`LocalProtocolError` - *your* code used the API wrongly (write before the handshake, two concurrent
  readers, use after close). Fix the calling code.
* :class:`AuthenticationError` - the handshake failed: bad credentials, a protection level or channel binding the
  peer refused, an error reported by the peer, a timeout, a mechanism (Kerberos) that is not installed.
* :class:`RemoteProtocolError` - the *peer* (or something between you and it) sent bytes that are not valid:
  malformed or oversize frames, truncated records, records that fail their integrity check.
* :class:`BrokenStreamError` - any call after one of the above made the stream unusable.

Where an SSPI ``SEC_E_*`` code (or a Windows status) describes the failure it is in :attr:`NegotiateError.status`,
so code ported from .NET or SSPI can keep matching on the same numbers.
"""

from __future__ import annotations

__all__ = [
    "SEC_E_BAD_BINDINGS",
    "SEC_E_CONTEXT_EXPIRED",
    "SEC_E_INCOMPLETE_MESSAGE",
    "SEC_E_INTERNAL_ERROR",
    "SEC_E_INVALID_TOKEN",
    "SEC_E_LOGON_DENIED",
    "SEC_E_MESSAGE_ALTERED",
    "SEC_E_OUT_OF_SEQUENCE",
    "SEC_E_QOP_NOT_SUPPORTED",
    "SEC_E_SECPKG_NOT_FOUND",
    "AuthenticationError",
    "BrokenStreamError",
    "ChannelBindingError",
    "ConnectionLostError",
    "ContextExpiredError",
    "FramingError",
    "HandshakeError",
    "HandshakeTimeoutError",
    "IdleTimeoutError",
    "IntegrityError",
    "KerberosUnavailableError",
    "LocalProtocolError",
    "MalformedTokenError",
    "NegotiateError",
    "ProtectionLevelError",
    "RemoteProtocolError",
    "ServiceNameError",
    "StreamClosedError",
    "TruncatedStreamError",
    "status_name",
]

# SSPI status codes (winerror.h). Kept as plain ints so they compare equal to values read off the wire.
SEC_E_INVALID_TOKEN = 0x80090308
SEC_E_QOP_NOT_SUPPORTED = 0x8009030A
SEC_E_LOGON_DENIED = 0x8009030C
SEC_E_MESSAGE_ALTERED = 0x8009030F
SEC_E_OUT_OF_SEQUENCE = 0x80090310
SEC_E_CONTEXT_EXPIRED = 0x80090317
SEC_E_INCOMPLETE_MESSAGE = 0x80090318
SEC_E_INTERNAL_ERROR = 0x80090304
SEC_E_BAD_BINDINGS = 0x80090346
SEC_E_SECPKG_NOT_FOUND = 0x80090305
SEC_E_TARGET_UNKNOWN = 0x80090303
SEC_E_NO_CREDENTIALS = 0x8009030E
SEC_E_NO_AUTHENTICATING_AUTHORITY = 0x80090311
SEC_E_TIME_SKEW = 0x80090324
ERROR_TRUST_FAILURE = 0x000006FE
E_FAIL = 0x80004005

_STATUS_NAMES = {
    SEC_E_INVALID_TOKEN: "SEC_E_INVALID_TOKEN",
    SEC_E_QOP_NOT_SUPPORTED: "SEC_E_QOP_NOT_SUPPORTED",
    SEC_E_LOGON_DENIED: "SEC_E_LOGON_DENIED",
    SEC_E_MESSAGE_ALTERED: "SEC_E_MESSAGE_ALTERED",
    SEC_E_OUT_OF_SEQUENCE: "SEC_E_OUT_OF_SEQUENCE",
    SEC_E_CONTEXT_EXPIRED: "SEC_E_CONTEXT_EXPIRED",
    SEC_E_INCOMPLETE_MESSAGE: "SEC_E_INCOMPLETE_MESSAGE",
    SEC_E_INTERNAL_ERROR: "SEC_E_INTERNAL_ERROR",
    SEC_E_BAD_BINDINGS: "SEC_E_BAD_BINDINGS",
    SEC_E_SECPKG_NOT_FOUND: "SEC_E_SECPKG_NOT_FOUND",
    SEC_E_TARGET_UNKNOWN: "SEC_E_TARGET_UNKNOWN",
    SEC_E_NO_CREDENTIALS: "SEC_E_NO_CREDENTIALS",
    SEC_E_NO_AUTHENTICATING_AUTHORITY: "SEC_E_NO_AUTHENTICATING_AUTHORITY",
    SEC_E_TIME_SKEW: "SEC_E_TIME_SKEW",
    ERROR_TRUST_FAILURE: "ERROR_TRUST_FAILURE",
    E_FAIL: "E_FAIL",
    0x80090301: "SEC_E_INVALID_HANDLE",
    0x80090302: "SEC_E_UNSUPPORTED_FUNCTION",
    0x80090321: "SEC_E_BUFFER_TOO_SMALL",
    0x80090337: "SEC_E_CRYPTO_SYSTEM_INVALID",
    0x80090300: "SEC_E_INSUFFICIENT_MEMORY",
    0x8009030D: "SEC_E_UNKNOWN_CREDENTIALS",
    0xC000006D: "STATUS_LOGON_FAILURE",
}

KNOWN_STATUS_CODES = frozenset(_STATUS_NAMES)


def status_name(status: int) -> str:
    """Return the symbolic name of an SSPI/Windows status code, or its hex form when unknown."""
    return _STATUS_NAMES.get(status, f"0x{status:08X}")


class NegotiateError(Exception):
    """Base class of every error raised by negotiate_stream.

    :attr:`status` holds the SSPI ``SEC_E_*`` (or Windows) status code that describes the failure, or ``None``
    when none applies.
    """

    #: Default status for the class; instances may carry a more precise one.
    default_status: int | None = None

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status: int | None = status if status is not None else self.default_status

    def __reduce__(self) -> tuple[object, ...]:
        # Keep copy/pickle working (e.g. across process pools): rebuild from the message, restore the status.
        return (type(self), self.args, {"status": self.status})

    def __str__(self) -> str:
        text = super().__str__()
        if self.status is not None:
            return f"{text} [{status_name(self.status)}]"
        return text


class LocalProtocolError(NegotiateError):
    """The calling code used the API in a way the current state does not allow (a bug in the caller)."""


class StreamClosedError(LocalProtocolError):
    """The stream was closed by this side; it cannot be used any more."""


class AuthenticationError(NegotiateError):
    """The handshake failed: credentials rejected, policy not met, or the peer reported a failure."""

    default_status: int | None = SEC_E_LOGON_DENIED


class HandshakeError(AuthenticationError):
    """The peer aborted the handshake with an MS-NNS HandshakeError (0x15) frame.

    :attr:`status` (also :attr:`error_code`) is the 32-bit code the peer sent, e.g. ``SEC_E_LOGON_DENIED``.
    """

    def __init__(self, error_code: int) -> None:
        super().__init__(
            f"the peer rejected the handshake with error {status_name(error_code)}; check the credentials, "
            "the target name (SPN) and that both sides agree on the protection level",
            status=error_code,
        )
        self.error_code = error_code

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.error_code,))


class ProtectionLevelError(AuthenticationError):
    """The negotiated context does not offer the protection level that was required."""

    default_status = SEC_E_QOP_NOT_SUPPORTED


class ChannelBindingError(AuthenticationError):
    """The channel bindings of the two sides did not match (possible man-in-the-middle)."""

    default_status = SEC_E_BAD_BINDINGS


class ServiceNameError(AuthenticationError):
    """The client authenticated for a service name the server does not answer to (its ``allowed_spns``).

    The server's extended-protection check (.NET ``ExtendedProtectionPolicy.CustomServiceNames``): the NTLM client's
    MsvAvTargetName, or the Kerberos ticket's service principal, is not listed, or the client named no target under
    ``channel_binding_policy="always"``. :attr:`status` is ``ERROR_TRUST_FAILURE``, the code .NET sends for it.
    """

    default_status = ERROR_TRUST_FAILURE


class KerberosUnavailableError(AuthenticationError):
    """Kerberos was required but cannot run here: the ``kerberos`` extra (python-gssapi, krb5) is not installed.

    Raised when a context is created with ``protocol="kerberos"``, and by the first :meth:`SecurityContext.step`
    of a ``"negotiate"`` context with ``allow_ntlm_fallback=False`` (Negotiate could only pick NTLM, which that
    option refuses). Install the extra with ``pip install 'negotiate-stream[kerberos]'``; building python-gssapi
    needs the system Kerberos library (libkrb5, e.g. Debian's ``libkrb5-dev``). :attr:`status` is
    ``SEC_E_SECPKG_NOT_FOUND``, or ``SEC_E_LOGON_DENIED`` for the refused NTLM fallback, as when Kerberos is
    installed but fails.
    """

    default_status = SEC_E_SECPKG_NOT_FOUND


class HandshakeTimeoutError(AuthenticationError, TimeoutError):
    """The handshake did not finish within the configured timeout."""

    default_status = None


class RemoteProtocolError(NegotiateError):
    """The peer sent data that violates the protocol; the stream is broken."""


class FramingError(RemoteProtocolError):
    """A malformed frame: unknown message id or version, a length of zero, too small or above the limit."""

    default_status = SEC_E_INVALID_TOKEN


class ConnectionLostError(RemoteProtocolError):
    """The peer went away where the protocol needed more: a reset or broken pipe, or an EOF mid-record.

    Catch this one class for "the peer vanished". The OS error (``ConnectionResetError``, ``BrokenPipeError``,
    ...), when there was one, is the ``__cause__``. An EOF inside a record or during the handshake is the subclass
    :class:`TruncatedStreamError`; a reset at those points is reported as :class:`TruncatedStreamError` too, so the
    type never depends on whether the peer's close arrived as a FIN or an RST.
    """

    default_status: int | None = SEC_E_INCOMPLETE_MESSAGE


class TruncatedStreamError(ConnectionLostError):
    """The peer closed (or reset) the connection in the middle of a frame or of the handshake."""

    default_status = SEC_E_INCOMPLETE_MESSAGE


class MalformedTokenError(AuthenticationError, FramingError):
    """The peer's handshake token is not a valid SPNEGO, NTLM or Kerberos message (:data:`SEC_E_INVALID_TOKEN`).

    Both an :class:`AuthenticationError` (the handshake failed, as for any other bad
    token) and a :class:`FramingError` (the peer sent bytes that are not the protocol):
    the fault is the peer's, not its credentials' and not this side's keytab.
    """

    default_status = SEC_E_INVALID_TOKEN


class IdleTimeoutError(ConnectionLostError, TimeoutError):
    """No record arrived from the peer within the adapter's ``idle_timeout``: the connection was closed.

    An authenticated peer that goes silent, or vanishes without a reset (a cable pulled, a host powered off),
    looks the same from here, so this is a :class:`ConnectionLostError` (and a :class:`TimeoutError`). Raised by
    the read that was waiting (``StreamReader.read`` of :func:`negotiate_stream.asyncio_.start_server`,
    :meth:`negotiate_stream.anyio_.NegotiateStream.receive`); later calls raise :class:`BrokenStreamError`.
    """

    default_status = None


class IntegrityError(RemoteProtocolError):
    """A record failed its signature check: tampering, replay, reordering or a dropped record."""

    default_status = SEC_E_MESSAGE_ALTERED


class ContextExpiredError(NegotiateError):
    """The security context has expired; authenticate again on a new connection."""

    default_status = SEC_E_CONTEXT_EXPIRED


class BrokenStreamError(NegotiateError):
    """The stream failed earlier and cannot be used any more; ``__cause__`` is the original error."""
