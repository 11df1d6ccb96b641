"""Plain option types shared by every layer: protection levels, credentials, stream sizes, context options.

Kept apart from :mod:`._context` and the pyspnego border (:mod:`._spnego`) so that codecs, adapters and the CLI
can use them without importing pyspnego.
"""

from __future__ import annotations

import enum
import string
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal, TypedDict

__all__ = [
    "CHANNEL_BINDING_POLICIES",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "RECEIVE_SIZE",
    "ChannelBindingPolicy",
    "ContextOptions",
    "Credentials",
    "Framing",
    "ImpersonationLevel",
    "ProtectionLevel",
    "ProtocolName",
    "StreamSizes",
]

#: Seconds a whole handshake may take before :class:`~negotiate_stream.errors.HandshakeTimeoutError` (every
#: adapter's default; ``None`` disables the deadline).
DEFAULT_HANDSHAKE_TIMEOUT = 30.0
#: Bytes an adapter asks its transport for per read: four full MS-NNS records, so bulk transfers need few reads
#: while an idle connection holds no buffer of its own.
RECEIVE_SIZE = 256 * 1024

ProtocolName = Literal["negotiate", "ntlm", "kerberos"]

#: How records travel after the handshake: MS-NNS (.NET NegotiateStream) or SASL security-layer buffers (LDAP).
Framing = Literal["nns", "sasl"]

#: How an acceptor treats the client's channel bindings (.NET ``PolicyEnforcement``, plus the default
#: ``"mechanism"``: each mechanism's own rule, what the library always did); see :class:`ContextOptions`.
ChannelBindingPolicy = Literal["mechanism", "never", "when_supported", "always"]
CHANNEL_BINDING_POLICIES: tuple[ChannelBindingPolicy, ...] = ("mechanism", "never", "when_supported", "always")

#: What the client allowed the server to do with its identity (.NET ``TokenImpersonationLevel``): only identify
#: it, act as it on the server's own host, or also on other hosts (Kerberos delegation).
ImpersonationLevel = Literal["identification", "impersonation", "delegation"]


class ProtectionLevel(str, enum.Enum):
    """How application data is protected after the handshake (``System.Net.Security.ProtectionLevel``)."""

    #: Authenticate only; data travels as raw bytes without framing.
    NONE = "none"
    #: Every record carries a signature (integrity, replay and order protection); data is readable on the wire.
    SIGN = "sign"
    #: Every record is encrypted and signed (confidentiality + integrity).
    ENCRYPT_AND_SIGN = "encrypt_and_sign"

    @property
    def rank(self) -> int:
        """0, 1, 2 for NONE, SIGN, ENCRYPT_AND_SIGN: a higher rank is stronger protection."""
        return _RANKS[self]

    @classmethod
    def parse(cls, value: ProtectionLevel | str) -> ProtectionLevel:
        """Accept an enum member or a name such as ``"sign"``, ``"encrypt"``, ``"EncryptAndSign"``."""
        if isinstance(value, ProtectionLevel):
            return value
        key = value.strip().lower().replace("-", "_").replace(" ", "_")
        aliases = {"encrypt": "encrypt_and_sign", "encryptandsign": "encrypt_and_sign", "seal": "encrypt_and_sign"}
        try:
            return cls(aliases.get(key, key))
        except ValueError:
            raise ValueError(f"unknown protection level {value!r}: use 'none', 'sign' or 'encrypt_and_sign'") from None


_RANKS = {ProtectionLevel.NONE: 0, ProtectionLevel.SIGN: 1, ProtectionLevel.ENCRYPT_AND_SIGN: 2}


@dataclass(frozen=True)
class Credentials:
    """Who we are.

    Client: ``username`` + ``password`` (with ``domain``, or ``DOMAIN\\user`` / ``user@REALM`` in ``username``),
    or ``username`` + ``nt_hash`` (the account's NT hash, 32 hex digits: NTLM only, as ``DOMAIN\\user``), or nothing /
    ``ccache`` for the current Kerberos ticket cache, or ``username`` + ``keytab`` (a client keytab).
    With a separate ``domain``, Kerberos uses ``user@DOMAIN`` (upper-cased realm) and NTLM ``DOMAIN\\user``, as .NET.
    Server: ``ntlm_user_file`` (lines ``DOMAIN:USER:PASSWORD`` or smbpasswd-style hashes, see
    :func:`write_ntlm_user_file`) for NTLM, ``keytab`` for Kerberos; by default the ``NTLM_USER_FILE`` and
    ``KRB5_KTNAME`` environment variables are used, as with gss-ntlmssp and MIT Kerberos.

    Kerberos (a ticket cache, a keytab, ``user@REALM``) needs the ``kerberos`` extra, ``pip install
    'negotiate-stream[kerberos]'``, which builds python-gssapi against the system Kerberos library (libkrb5, e.g.
    Debian's ``libkrb5-dev``); without it ``"negotiate"`` authenticates with NTLM only.

    A server's :attr:`SessionInfo.delegated_credentials <negotiate_stream.SessionInfo.delegated_credentials>` is
    one of these too (``username`` + a ``MEMORY:`` ``ccache``), ready for the server's own outgoing connections.

    Neither the password nor the NT hash is ever shown by ``repr`` or in an error message.
    """

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    domain: str | None = None
    ccache: str | None = None
    keytab: str | None = None
    ntlm_user_file: str | None = None
    nt_hash: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.nt_hash is None:
            return
        # The messages never quote the value: it is as good as the password to anyone who reads the log.
        if len(self.nt_hash) != 32 or not set(self.nt_hash) <= set(string.hexdigits):
            raise ValueError("nt_hash must be the account's NT hash as 32 hexadecimal digits")
        if self.password is not None or self.ccache is not None or self.keytab is not None:
            raise ValueError("nt_hash replaces the password: give it without password, ccache or keytab")
        if not self.username:
            raise ValueError("nt_hash needs the username (and domain) it belongs to")

    @property
    def principal(self) -> str | None:
        """The user name as pyspnego expects it: ``DOMAIN\\user``, ``user@REALM`` or plain ``user``."""
        if self.username is None:
            return None
        if self.domain and "\\" not in self.username and "@" not in self.username:
            return f"{self.domain}\\{self.username}"
        return self.username


@dataclass(frozen=True)
class StreamSizes:
    """The equivalent of SSPI's ``SecPkgContext_StreamSizes`` for this context and framing."""

    #: Bytes of signature/token header added before each record's data.
    header: int
    #: Bytes added after the data (0 for NTLM and RFC 4121 tokens as produced here).
    trailer: int
    #: Largest plaintext put into one record.
    max_message: int


class ContextOptions(TypedDict, total=False):
    """Keyword options accepted by every adapter to build a :class:`SecurityContext`.

    - ``credentials``: who we are (:class:`Credentials`); default: the environment (ticket cache, user file).
    - ``target``: the service principal name of the server, ``service/host`` (default ``host/localhost``; the
      connection helpers default to ``host/<the host you connect to>``). A bare host name means ``host/<name>``.
    - ``protocol``: ``"negotiate"`` (SPNEGO: Kerberos, else NTLM; default), ``"ntlm"`` or ``"kerberos"``.
      Kerberos needs the ``kerberos`` extra; without it ``"kerberos"`` raises
      :class:`~negotiate_stream.errors.KerberosUnavailableError`.
    - ``protection_level``: ``"encrypt_and_sign"`` (default), ``"sign"`` or ``"none"``. On a server it is the
      minimum accepted; a client asking for more gets more (as in .NET).
    - ``channel_bindings``: ``tls-server-end-point`` application data (see :mod:`negotiate_stream.channel_bindings`).
    - ``require_mutual_auth``: fail the handshake unless the server proved its identity (Kerberos).
    - ``allow_ntlm_fallback``: with ``"negotiate"``, set False to refuse NTLM (fails before credentials are sent;
      without the ``kerberos`` extra the first step raises :class:`~negotiate_stream.errors.KerberosUnavailableError`).
    - ``ntlm_seal_sign_only``: the record layout at protection level ``"sign"`` with NTLM. ``True`` seals the
      records, as gss-ntlmssp (.NET on Linux/macOS) does and as Windows and Samba LDAP do (NTLM sign used
      LDAP-style is sealed); ``False`` is the Windows MS-NNS layout (signature + plaintext). The default ``None``
      (auto) follows the framing: sealed under SASL framing, the Windows layout under MS-NNS and for a context
      used without a :class:`~negotiate_stream.Connection`. Both sides must agree.
    - ``channel_binding_policy`` (server): ``"always"`` refuses a client that did not prove the channel (sent no
      bindings, or NTLM's all-zero "no channel" value), ``"when_supported"`` refuses only wrong bindings,
      ``"never"`` ignores them (.NET ``PolicyEnforcement``). The default ``"mechanism"`` keeps each mechanism's own
      rule: the NTLM acceptor refuses a client without bindings, MIT Kerberos accepts it. Refusals raise
      :class:`~negotiate_stream.errors.ChannelBindingError` (``SEC_E_BAD_BINDINGS``). See docs/howto-server-policy.md.
    - ``allowed_spns`` (server): the service names the server answers to (.NET ``ServiceNameCollection``), e.g.
      ``["HTTP/web.example.com"]``: the NTLM client's MsvAvTargetName, or the service principal of the Kerberos
      ticket, must be one of them (case-insensitive; a name without ``@REALM`` matches any realm). A client that
      names no target is refused under ``"always"`` only; ``"never"`` skips the check.
      :class:`~negotiate_stream.errors.ServiceNameError` (``ERROR_TRUST_FAILURE``, as .NET) otherwise.
    - ``delegate`` (client): ask Kerberos to forward the client's TGT to the server (``TokenImpersonationLevel
      .Delegation``); needs a forwardable ticket (``kinit -f``; a password or keytab gets one itself). The handshake
      fails before the ticket is sent if the ticket cannot be forwarded, or with NTLM, which cannot delegate.
    """

    credentials: Credentials | None
    target: str
    protocol: ProtocolName
    protection_level: ProtectionLevel | str
    channel_bindings: bytes | None
    require_mutual_auth: bool
    allow_ntlm_fallback: bool
    ntlm_seal_sign_only: bool | None
    channel_binding_policy: ChannelBindingPolicy
    allowed_spns: Collection[str] | None
    delegate: bool
