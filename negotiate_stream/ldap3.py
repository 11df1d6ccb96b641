"""Signed and sealed LDAP for ldap3: a SASL bind with our security context, then every message in SASL records.

Domain controllers require LDAP signing on port 389 and channel binding on 636 (Microsoft ADV190023); ldap3 has no
released way to sign or seal a SASL session. :func:`bind` does the SASL bind on a connected, unbound
``ldap3.Connection`` and then swaps the connection's socket for one that wraps every LDAP message in SASL
security-layer records (RFC 4422 section 3.7). Nothing else changes for the caller::

    import ldap3
    from negotiate_stream import Credentials
    from negotiate_stream.ldap3 import bind

    conn = ldap3.Connection(ldap3.Server("ldap://dc1.example.com"))
    bind(conn, credentials=Credentials("alice", "secret", domain="EXAMPLE"))   # GSS-SPNEGO, sealed
    conn.search("DC=example,DC=com", "(sAMAccountName=alice)", attributes=["memberOf"])

Needs the ``ldap3`` extra (``pip install 'negotiate-stream[ldap3]'``); Kerberos also needs the ``kerberos`` extra.

* **Mechanisms**: ``GSS-SPNEGO`` (default; what Windows and Samba use: Kerberos, else NTLM; the layer follows the
  context flags) or ``GSSAPI`` (Kerberos only, with the RFC 4752 security-layer negotiation).
* **Protection**: ``protection_level="encrypt_and_sign"`` (default on ``ldap://``) or ``"sign"``. Over TLS
  (``ldaps://`` or after ``start_tls()``) the default is ``"none"``: TLS already protects the session, and AD and
  Samba refuse a SASL layer inside TLS (``unwillingToPerform``).
* **NTLM "sign" is sealed on the wire.** Windows, and Samba's NTLMSSP client and server, treat NTLMSSP sign as seal
  when the context is used LDAP-style (Samba's ``force_wrap_seal`` under ``GENSEC_FEATURE_LDAP_STYLE``), so an LDAP
  sign-only session over NTLM wraps with the sealed layout. That is what the default ``ntlm_seal_sign_only=None``
  (auto) does under SASL framing; ``False`` forces the Windows MS-NNS sign layout (signature + plaintext), which
  Samba refuses as an invalid signature.
* **Channel bindings**: over TLS, ``tls-server-end-point`` bindings are computed from the server certificate
  (:mod:`negotiate_stream.channel_bindings`); ``channel_bindings=`` overrides them (``None``: send none).
* **Strategies**: ``SYNC`` and ``SAFE_SYNC`` only. The others are refused with :class:`LocalProtocolError`: the
  asynchronous ones read the socket from another thread, the restartable and pooled ones reopen connections and
  bind again with ldap3's own bind, which would silently drop the security layer; ``lazy`` connections likewise.

Failures are this package's errors: a refused bind is :class:`SaslBindError` (an :class:`AuthenticationError`)
with the LDAP result code (``strongerAuthRequired``, ``invalidCredentials``...); after the bind, a tampered or
truncated server buffer raises :class:`IntegrityError` / :class:`TruncatedStreamError` from the ldap3 call, and a
server that drops the connection mid-operation :class:`ConnectionLostError`; every later call then raises
:class:`BrokenStreamError`. Socket timeouts (``receive_timeout``) stay ldap3's own errors. Do not call ldap3's
``rebind()`` on such a connection: open a new one.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import Any, Literal

from ._connection import Connection
from ._context import Credentials, ProtectionLevel, SecurityContext
from ._events import SessionInfo, State
from ._options import ProtocolName
from .channel_bindings import tls_server_end_point
from .errors import (
    SEC_E_QOP_NOT_SUPPORTED,
    AuthenticationError,
    ConnectionLostError,
    LocalProtocolError,
    NegotiateError,
)
from .sasl_gssapi import NegotiatedLayer, SecurityLayer, client_reply
from .sasl_gssapi import connection as gssapi_connection
from .sync import NegotiateSocket

try:
    import ldap3
    from ldap3.core.exceptions import LDAPCommunicationError, LDAPOperationResult
    from ldap3.core.results import RESULT_CODES
    from ldap3.operation.bind import bind_operation
except ImportError as exc:  # pragma: no cover - the extra is part of the test tools
    raise ImportError("negotiate_stream.ldap3 needs the ldap3 extra: pip install 'negotiate-stream[ldap3]'") from exc

__all__ = ["SUPPORTED_STRATEGIES", "SaslBindError", "SaslSession", "bind"]

#: The ldap3 client strategies :func:`bind` accepts: synchronous, one operation at a time on one socket.
SUPPORTED_STRATEGIES = frozenset({ldap3.SYNC, ldap3.SAFE_SYNC})

_SUCCESS = 0
_SASL_BIND_IN_PROGRESS = 14
# Result codes that mean "more protection needed": strongerAuthRequired, confidentialityRequired.
_PROTECTION_RESULTS = frozenset({8, 13})
# AD and Samba start a failed bind's diagnostic message with the SSPI/Win32 code: "8009030C: LdapErr: ...".
_DIAGNOSTIC_CODE = re.compile(r"^([0-9A-Fa-f]{8}): ")
_LAYERS = {
    ProtectionLevel.NONE: SecurityLayer.NONE,
    ProtectionLevel.SIGN: SecurityLayer.INTEGRITY,
    ProtectionLevel.ENCRYPT_AND_SIGN: SecurityLayer.CONFIDENTIALITY,
}

Mechanism = Literal["GSS-SPNEGO", "GSSAPI"]


class SaslBindError(AuthenticationError):
    """The LDAP server refused the SASL bind; :attr:`result_code` is the LDAP result code it sent.

    For example 49 ``invalidCredentials`` (wrong password), 8 ``strongerAuthRequired`` (no signing on a DC that
    requires it), 53 ``unwillingToPerform`` (AD and Samba: signing or sealing inside TLS). :attr:`status` is the
    SSPI code the server's diagnostic message starts with (AD and Samba write one), else ``SEC_E_QOP_NOT_SUPPORTED``
    for results that ask for more protection, else ``SEC_E_LOGON_DENIED``.
    """

    def __init__(self, message: str, *, result_code: int, server_message: str = "", status: int | None = None) -> None:
        super().__init__(message, status=status)
        #: The LDAP result code (RFC 4511 section 4.1.9).
        self.result_code = result_code
        #: Its name, e.g. ``"invalidCredentials"``.
        self.result_name: str = RESULT_CODES.get(result_code, "unknown")
        #: The server's diagnostic message (may be empty).
        self.server_message = server_message

    def __reduce__(self) -> tuple[object, ...]:
        state = {"status": self.status, "result_name": self.result_name}
        return (_rebuild_bind_error, (str(self.args[0]), self.result_code, self.server_message), state)


def _rebuild_bind_error(message: str, result_code: int, server_message: str) -> SaslBindError:
    return SaslBindError(message, result_code=result_code, server_message=server_message)


@dataclass(frozen=True)
class SaslSession:
    """What :func:`bind` established on the ldap3 connection."""

    #: ``"GSS-SPNEGO"`` or ``"GSSAPI"``.
    mechanism: str
    #: The negotiated session: protocol (``"ntlm"``/``"kerberos"``), protection level, mutual authentication...
    info: SessionInfo
    #: True when the bind ran inside TLS (``ldaps://`` or StartTLS).
    tls: bool
    #: The channel-binding application data sent (``tls-server-end-point:`` + hash), ``None`` if none.
    channel_bindings: bytes | None


class _SaslSocket(NegotiateSocket):
    """The socket ldap3 uses after the bind: LDAP messages in SASL records over the original socket.

    ldap3's SYNC strategies call ``recv`` only while they wait for a response, so an end of stream there is a
    server that went away mid-operation: it raises :class:`ConnectionLostError` instead of returning ``b""``
    (which ldap3 would report as its own ``LDAPSessionTerminatedByServerError``). Resets are reported the same
    way, as our error rather than an OSError that ldap3 would rename.
    """

    def recv(self, bufsize: int = 65536) -> bytes:
        """Return verified plaintext; raise :class:`ConnectionLostError` if the server closed or reset."""
        try:
            data = super().recv(bufsize)
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as exc:
            raise ConnectionLostError(f"the LDAP server reset the connection during an operation ({exc})") from exc
        if not data and bufsize:
            error = ConnectionLostError(
                "the LDAP server closed the connection before it answered the operation: its outcome is unknown; "
                "open a new connection (the server's log says why it hung up)"
            )
            self.connection.mark_broken(error)  # sticky, as for any other failure
            raise error
        return data

    def sendall(self, data: Any) -> None:
        """Protect and send ``data``; raise :class:`ConnectionLostError` if the server closed or reset.

        On a broken stream an UnbindRequest is dropped silently instead of raising: ldap3's ``unbind()`` closes
        the socket right after sending it, and a session that can send nothing must still be closable.
        """
        if self.connection.state is State.BROKEN and _is_unbind(data):
            return
        try:
            super().sendall(data)
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as exc:
            raise ConnectionLostError(f"the LDAP server went away while a request was sent ({exc})") from exc

    # ldap3 names the endpoints in its repr and logs; these forward to the wrapped socket.
    def getpeername(self) -> Any:
        """The wrapped socket's remote address."""
        return self._sock.getpeername()  # type: ignore[attr-defined]

    def getsockname(self) -> Any:
        """The wrapped socket's local address."""
        return self._sock.getsockname()  # type: ignore[attr-defined]

    def fileno(self) -> int:
        """The wrapped socket's file descriptor."""
        return int(self._sock.fileno())  # type: ignore[attr-defined]

    def getpeercert(self, binary_form: bool = False) -> Any:
        """The TLS peer certificate of the wrapped socket (``ssl.SSLSocket`` only)."""
        return self._sock.getpeercert(binary_form)  # type: ignore[attr-defined]


def _is_unbind(pdu: Any) -> bool:
    """True for an LDAPMessage carrying an UnbindRequest (protocolOp tag 0x42 after the message id)."""
    view = memoryview(pdu).cast("B")
    if len(view) < 2 or view[0] != 0x30:
        return False
    pos = 2 + (view[1] & 0x7F if view[1] & 0x80 else 0)  # past the SEQUENCE's tag and length
    if pos + 2 > len(view) or view[pos] != 0x02:
        return False
    pos += 2 + view[pos + 1]  # past the messageID INTEGER
    return pos < len(view) and view[pos] == 0x42


def bind(
    connection: Any,
    *,
    credentials: Credentials | None = None,
    protocol: ProtocolName | None = None,
    mechanism: Mechanism = "GSS-SPNEGO",
    protection_level: ProtectionLevel | str | None = None,
    target: str | None = None,
    channel_bindings: bytes | Literal["auto"] | None = "auto",
    require_mutual_auth: bool = False,
    allow_ntlm_fallback: bool = True,
    ntlm_seal_sign_only: bool | None = None,
    authzid: bytes = b"",
    controls: Any = None,
    read_server_info: bool = True,
) -> SaslSession:
    """SASL-bind the unbound ``ldap3.Connection`` with a Negotiate context and protect everything after it.

    Opens the connection if it is closed. ``protocol`` defaults to ``"negotiate"`` for ``GSS-SPNEGO`` and must be
    ``"kerberos"`` (its default) for ``GSSAPI``. ``target`` defaults to ``ldap/<server host>``. See the module
    docstring for ``protection_level``, ``channel_bindings`` and ``ntlm_seal_sign_only``; ``authzid`` is the
    RFC 4752 authorization identity (``GSSAPI`` only). With ``read_server_info`` the server's info and schema are
    read afterwards, as ldap3's own bind does, through the new security layer.

    Raises :class:`LocalProtocolError` for an unsupported strategy or a connection already bound,
    :class:`SaslBindError` when the server refuses the bind, :class:`AuthenticationError` (or a subclass) when our
    side fails it, :class:`ConnectionLostError` when the connection fails during the bind (opening it is ldap3's:
    its own errors). If the server accepted
    the bind but our side then failed (e.g. ``require_mutual_auth``) the connection is closed: the server would
    expect a security layer that is not there.
    """
    _check_connection(connection)
    if mechanism not in ("GSS-SPNEGO", "GSSAPI"):
        raise ValueError(f"unknown SASL mechanism {mechanism!r}: use 'GSS-SPNEGO' or 'GSSAPI'")
    protocol = protocol or ("kerberos" if mechanism == "GSSAPI" else "negotiate")
    if mechanism == "GSSAPI" and protocol != "kerberos":
        raise ValueError("the SASL GSSAPI mechanism (RFC 4752) is Kerberos only: use protocol='kerberos'")
    with connection.connection_lock:  # as ldap3's own bind: no other operation while the socket changes
        if connection.closed:
            connection.open(read_server_info=False)
        raw = connection.socket
        tls = isinstance(raw, ssl.SSLSocket)
        level = ProtectionLevel.parse(protection_level or ("none" if tls else "encrypt_and_sign"))
        bindings = _tls_bindings(raw) if channel_bindings == "auto" else channel_bindings
        context = SecurityContext.client(
            credentials=credentials,
            target=target or f"ldap/{connection.server.host}",
            protocol=protocol,
            protection_level=level,
            channel_bindings=bindings,
            require_mutual_auth=require_mutual_auth,
            allow_ntlm_fallback=allow_ntlm_fallback,
            ntlm_seal_sign_only=ntlm_seal_sign_only,
        )
        exchange = _BindExchange(connection, context, mechanism, controls)
        try:
            layer = exchange.run(_LAYERS[level], authzid)
            # GSS-SPNEGO has no layer negotiation (None): its layer follows the context flags.
            sasl = Connection(context, framing="sasl") if layer is None else gssapi_connection(context, layer)
        except NegotiateError:
            if exchange.accepted:
                connection.strategy.close()  # the server now expects records we will never write
            raise
        info = sasl.info
        if info is None:  # pragma: no cover - a SASL Connection is established from its construction
            raise LocalProtocolError("the SASL session did not start")
        if info.protection_level is not ProtectionLevel.NONE:  # none (inside TLS): ldap3 keeps its own socket
            connection.socket = _SaslSocket(raw, sasl)
        connection.bound = True
        if read_server_info:
            connection.refresh_server_info()
    return SaslSession(mechanism, info, tls, bindings)


def _check_connection(connection: Any) -> None:
    strategy = getattr(connection, "strategy_type", None)
    if strategy not in SUPPORTED_STRATEGIES:
        raise LocalProtocolError(
            f"ldap3 strategy {strategy!r} is not supported: use client_strategy=ldap3.SYNC or SAFE_SYNC (the "
            "asynchronous ones read the socket from another thread; the restartable and pooled ones reopen "
            "connections and bind with ldap3's own bind, without the security layer)"
        )
    if getattr(connection, "lazy", False):
        raise LocalProtocolError("lazy ldap3 connections bind later with ldap3's own bind: use lazy=False")
    if connection.bound:
        raise LocalProtocolError("the ldap3 connection is already bound: bind() needs a fresh, unbound connection")


def _tls_bindings(sock: Any) -> bytes | None:
    """``tls-server-end-point`` bindings from the TLS server certificate, ``None`` when not over TLS."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    certificate = sock.getpeercert(binary_form=True)
    if not certificate:
        raise LocalProtocolError("the TLS server sent no certificate: pass channel_bindings= explicitly")
    return tls_server_end_point(certificate)


class _BindExchange:
    """The SASL bind conversation: BindRequests carrying our tokens until the server says success."""

    def __init__(self, connection: Any, context: SecurityContext, mechanism: str, controls: Any) -> None:
        self.connection = connection
        self.context = context
        self.mechanism = mechanism
        self.controls = controls
        #: True once the server answered success (a failure after that must close the connection).
        self.accepted = False

    def run(self, wanted: SecurityLayer, authzid: bytes) -> NegotiatedLayer | None:
        """Bind; return the RFC 4752 layer for GSSAPI, ``None`` for GSS-SPNEGO."""
        context = self.context
        token: bytes | None = context.step(None)
        layer: NegotiatedLayer | None = None
        while True:
            result = self._send(token or b"")
            code = int(result["result"])
            server_token = result.get("saslCreds") or None
            if code == _SUCCESS:
                self.accepted = True
                if server_token and not context.complete:
                    context.step(bytes(server_token))  # SPNEGO's last token: the mechListMIC, or Kerberos AP-REP
                if not context.complete or (self.mechanism == "GSSAPI" and layer is None):
                    raise AuthenticationError(
                        "the LDAP server accepted the bind before the security context (and, for GSSAPI, the "
                        "security layer) was complete: refusing an unverified session"
                    )
                self.connection.result = result
                return layer
            if code != _SASL_BIND_IN_PROGRESS:
                raise _bind_error(code, str(result.get("message") or ""))
            if not context.complete:
                token = context.step(bytes(server_token) if server_token else None)
            elif self.mechanism == "GSSAPI" and layer is None and server_token:
                # RFC 4752: the server's wrapped offer of security layers; we answer with our choice.
                token, layer = client_reply(context, bytes(server_token), layer=wanted, authzid=authzid)
            else:
                raise AuthenticationError(
                    "the LDAP server asks for another bind round after the security context completed"
                )

    def _send(self, token: bytes) -> dict[str, Any]:
        conn = self.connection
        request = bind_operation(conn.version, ldap3.SASL, None, None, self.mechanism, token)
        try:
            responses = conn.post_send_single_response(conn.send("bindRequest", request, self.controls))
        except LDAPOperationResult as exc:  # raise_exceptions=True: ldap3 raised for the refusal itself
            raise _bind_error(int(exc.result), str(exc.message or "")) from exc
        except LDAPCommunicationError as exc:
            raise ConnectionLostError(f"the connection to the LDAP server failed during the bind: {exc}") from exc
        result: dict[str, Any] = responses[-1]
        return result


def _bind_error(code: int, server_message: str) -> SaslBindError:
    name = RESULT_CODES.get(code, "unknown")
    match = _DIAGNOSTIC_CODE.match(server_message)
    status = int(match.group(1), 16) if match else SEC_E_QOP_NOT_SUPPORTED if code in _PROTECTION_RESULTS else None
    hint = {
        8: ": the server requires signing or sealing (use protection_level 'sign' or 'encrypt_and_sign', or TLS)",
        49: ": check the user name, domain and password",
        53: ": AD and Samba refuse SASL signing or sealing inside TLS (use protection_level='none' over TLS)",
    }.get(code, "")
    detail = f" ({server_message})" if server_message else ""
    return SaslBindError(
        f"the LDAP server refused the SASL bind: {name} ({code}){detail}{hint}",
        result_code=code,
        server_message=server_message,
        status=status,
    )
