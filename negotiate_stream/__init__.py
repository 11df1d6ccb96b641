"""negotiate_stream: wrap any byte stream in a Negotiate (SPNEGO / NTLM / Kerberos) security context.

The core is sans-I/O (:class:`Connection` over a :class:`SecurityContext`); thin adapters run it on asyncio
(:mod:`negotiate_stream.asyncio_`), anyio/trio (:mod:`negotiate_stream.anyio_`) and blocking sockets
(:mod:`negotiate_stream.sync`). Wire formats: MS-NNS (.NET ``NegotiateStream``, WCF net.tcp) and SASL security
layers (LDAP GSSAPI / GSS-SPNEGO).
"""

from ._connection import Connection
from ._context import ContextOptions, Credentials, ProtectionLevel, SecurityContext, StreamSizes
from ._events import NEED_DATA, Data, EndOfStream, Event, HandshakeComplete, SessionInfo, State
from .errors import (
    AuthenticationError,
    BrokenStreamError,
    ChannelBindingError,
    ConnectionLostError,
    ContextExpiredError,
    FramingError,
    HandshakeError,
    HandshakeTimeoutError,
    IdleTimeoutError,
    IntegrityError,
    KerberosUnavailableError,
    LocalProtocolError,
    MalformedTokenError,
    NegotiateError,
    ProtectionLevelError,
    RemoteProtocolError,
    ServiceNameError,
    StreamClosedError,
    TruncatedStreamError,
)

__version__ = "0.1.0"

__all__ = [
    "NEED_DATA",
    "AuthenticationError",
    "BrokenStreamError",
    "ChannelBindingError",
    "Connection",
    "ConnectionLostError",
    "ContextExpiredError",
    "ContextOptions",
    "Credentials",
    "Data",
    "EndOfStream",
    "Event",
    "FramingError",
    "HandshakeComplete",
    "HandshakeError",
    "HandshakeTimeoutError",
    "IdleTimeoutError",
    "IntegrityError",
    "KerberosUnavailableError",
    "LocalProtocolError",
    "MalformedTokenError",
    "NegotiateError",
    "ProtectionLevel",
    "ProtectionLevelError",
    "RemoteProtocolError",
    "SecurityContext",
    "ServiceNameError",
    "SessionInfo",
    "State",
    "StreamClosedError",
    "StreamSizes",
    "TruncatedStreamError",
    "__version__",
]
